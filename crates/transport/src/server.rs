//! The receiving driver: a quinn endpoint that accepts pinned senders,
//! runs the handshake and a [`ReceiverSession`] per transfer, and keeps
//! each session (with its open sink) for the grace period after its
//! connection is lost, so that a reconnecting sender resumes it.

use crate::chunk_cache::{ChunkCacheOptions, ChunkCaches};
use crate::config::LinkConfig;
use crate::control::{Control, NoControl};
use crate::identity::{peer_key, Identity, IdentityError, PublicKey};
use crate::message::{offer_flags, Message, MessageReader, RefuseCode, SessionId};
use crate::receiver::{refuse, Action, Handshake, ReceiverSession, ReceiverStats};
use crate::sink::{Sink, SinkError, SinkFactory};
use crate::{close_code, SessionError};
use bytes::BytesMut;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

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
    /// Most transfers held at once (attached or in their grace period);
    /// further offers are answered `Busy` and the senders retry. 0: no limit.
    pub max_sessions: usize,
    /// The persistent chunk cache for dedup across packed transfers; none
    /// answers inventories with nothing.
    pub chunk_cache: Option<ChunkCacheOptions>,
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
    /// A session failed; nothing of it is presented as complete.
    Failed {
        /// The session.
        session: SessionId,
        /// Why.
        error: String,
    },
    /// A connection was refused before any session started.
    Refused {
        /// The remote address.
        remote: SocketAddr,
        /// Why.
        reason: String,
    },
}

struct Slot {
    session: ReceiverSession,
    sink: Box<dyn Sink>,
}

struct Entry {
    slot: Arc<tokio::sync::Mutex<Slot>>,
    /// The connection currently carrying the session.
    conn: Option<quinn::Connection>,
}

struct Shared {
    sessions: Mutex<HashMap<SessionId, Entry>>,
    factory: Arc<dyn SinkFactory>,
    control: Arc<dyn Control>,
    caches: Option<ChunkCaches>,
    grace: Duration,
    max_sessions: usize,
    events: mpsc::UnboundedSender<ServerEvent>,
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        // A panic while holding the lock leaves plain data behind.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
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
        let tls = identity.server_tls(opts.allowed.clone())?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| setup(e.to_string()))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        cfg.transport_config(opts.link.transport_arc().map_err(setup)?);
        cfg.migration(true);
        let endpoint =
            quinn::Endpoint::server(cfg, opts.listen).map_err(|e| setup(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            sessions: Mutex::new(HashMap::new()),
            factory,
            control,
            // A sender asks for the inventory just before its offer; the
            // lease waits as long as a lost session would.
            caches: opts
                .chunk_cache
                .clone()
                .map(|c| ChunkCaches::new(c, opts.grace.max(Duration::from_secs(600)))),
            grace: opts.grace,
            max_sessions: opts.max_sessions,
            events: tx,
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
        self.shared.table().len()
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
        let entries: Vec<(SessionId, Arc<tokio::sync::Mutex<Slot>>)> = self
            .shared
            .table()
            .drain()
            .map(|(id, e)| (id, e.slot))
            .collect();
        let mut aborted = 0;
        for (id, slot) in entries {
            match tokio::time::timeout(Duration::from_secs(10), slot.lock_owned()).await {
                Ok(mut slot) => {
                    tokio::task::block_in_place(|| slot.sink.abort(why));
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
                handle_connection(conn, shared).await;
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

/// Expires detached sessions whose grace period ran out.
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
            let mut table = shared.table();
            table.retain(|id, entry| {
                if entry.conn.is_some() {
                    return true;
                }
                let Ok(mut slot) = entry.slot.clone().try_lock_owned() else {
                    return true;
                };
                match slot.session.handle_timeout(now) {
                    Ok(()) => true,
                    Err(e) => {
                        expired.push((*id, slot, e));
                        false
                    }
                }
            });
        }
        for (id, mut slot, e) in expired {
            let why = e.to_string();
            tokio::task::block_in_place(|| slot.sink.abort(&why));
            warn!(session = %id, delivered = slot.session.stats().delivered, error = %why, "session abandoned");
            let _ = shared.events.send(ServerEvent::Failed {
                session: id,
                error: why,
            });
        }
    }
}

async fn read_message(
    recv: &mut quinn::RecvStream,
    reader: &mut MessageReader,
) -> Result<Message, String> {
    loop {
        if let Some(m) = reader
            .next_message()
            .map_err(|e| format!("undecodable message: {e}"))?
        {
            return Ok(m);
        }
        match recv.read_chunk(1 << 20, true).await {
            Ok(Some(c)) => reader.feed(&c.bytes),
            Ok(None) => return Err("the sender closed the stream".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn write(send: &mut quinn::SendStream, msg: &Message) -> Result<(), String> {
    send.write_all(&msg.to_bytes())
        .await
        .map_err(|e| e.to_string())
}

async fn refuse_conn(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    shared: &Shared,
    msg: Message,
    err: SessionError,
) {
    let _ = write(send, &msg).await;
    let _ = send.finish();
    // Give the refusal a moment to arrive before the close.
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    let reason = err.to_string();
    warn!(error = %reason, "refused");
    conn.close(close_code::REFUSED.into(), reason.as_bytes());
    let _ = shared.events.send(ServerEvent::Refused {
        remote: conn.remote_address(),
        reason,
    });
}

async fn handle_connection(conn: quinn::Connection, shared: Arc<Shared>) {
    let Some(key) = peer_key(conn.peer_identity()) else {
        conn.close(close_code::REFUSED.into(), b"no peer key");
        return;
    };
    let accepted = tokio::time::timeout(Duration::from_secs(30), conn.accept_bi()).await;
    let (mut send, mut recv) = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            info!(error = %e, "connection ended before a session started");
            return;
        }
        Err(_) => {
            conn.close(close_code::PROTOCOL.into(), b"no stream opened in 30 s");
            return;
        }
    };
    let mut reader = MessageReader::new();
    let mut hs = Handshake::AwaitHello;
    let first = tokio::time::timeout(
        Duration::from_secs(30),
        read_message(&mut recv, &mut reader),
    )
    .await;
    let hello = match first {
        Ok(Ok(m)) => m,
        other => {
            let e = match other {
                Ok(Err(e)) => e,
                _ => "no hello within 30 s".into(),
            };
            let (m, err) = *refuse(RefuseCode::Other, e);
            refuse_conn(&conn, &mut send, &shared, m, err).await;
            return;
        }
    };
    if let Err(r) = hs.hello(hello, &key.0) {
        let (m, err) = *r;
        refuse_conn(&conn, &mut send, &shared, m, err).await;
        return;
    }
    let Handshake::AwaitOffer { version } = hs else {
        return;
    };
    let offer = match read_message(&mut recv, &mut reader).await {
        Ok(Message::Offer(o)) => o,
        Ok(Message::Request(first)) => {
            serve_requests(&shared, &key, first, &mut send, &mut recv, &mut reader).await;
            return;
        }
        Ok(other) => {
            let (m, err) = *refuse(
                RefuseCode::Other,
                format!("expected offer, got {}", other.kind()),
            );
            refuse_conn(&conn, &mut send, &shared, m, err).await;
            return;
        }
        Err(e) => {
            info!(error = %e, "connection ended before the offer");
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
        refuse_conn(&conn, &mut send, &shared, m, err).await;
        return;
    }
    let id = offer.session;
    let span =
        tracing::info_span!("session", session = %id, dataset = %offer.dataset, sender = %key);
    async move {
        // Find or create the session, taking it over from an older connection.
        let existing = {
            let mut table = shared.table();
            match table.get_mut(&id) {
                Some(entry) => {
                    if let Some(old) = entry.conn.replace(conn.clone()) {
                        old.close(close_code::TAKEN_OVER.into(), b"taken over by a newer connection");
                    }
                    Some(entry.slot.clone())
                }
                None => None,
            }
        };
        let (slot, answer) = match existing {
            Some(slot) => {
                let mut guard = slot.lock_owned().await;
                match guard.session.reattach(&offer, &key.0, version) {
                    Ok(a) => {
                        info!(offset = guard.session.stats().delivered, "session resumed");
                        (guard, a)
                    }
                    Err(r) => {
                        let (m, err) = *r;
                        drop(guard);
                        refuse_conn(&conn, &mut send, &shared, m, err).await;
                        return;
                    }
                }
            }
            None if offer.resuming => {
                let (m, err) = *refuse(
                    RefuseCode::UnknownSession,
                    "this receiver does not know the session (its grace period expired, or the receiver restarted); send the stream again".into(),
                );
                refuse_conn(&conn, &mut send, &shared, m, err).await;
                return;
            }
            None if shared.max_sessions > 0 && shared.table().len() >= shared.max_sessions => {
                let (m, err) = *refuse(
                    RefuseCode::Busy,
                    format!(
                        "the receiver is at its limit of {} concurrent transfers; retrying",
                        shared.max_sessions
                    ),
                );
                refuse_conn(&conn, &mut send, &shared, m, err).await;
                return;
            }
            None => {
                let sink = match tokio::task::block_in_place(|| shared.factory.open(&offer, &key)) {
                    Ok(s) if offer.flags & offer_flags::PACKED != 0 => {
                        tokio::task::block_in_place(|| packed_sink(&shared, s, &offer, &key))
                    }
                    other => other,
                };
                // Decoding, verifying and writing run beside the network loop.
                let sink = sink.and_then(|s| {
                    crate::threaded::ThreadedSink::spawn(s)
                        .map(|t| Box::new(t) as Box<dyn Sink>)
                        .map_err(|e| SinkError::Refused(format!("cannot start the sink thread: {e}")))
                });
                let sink = match sink {
                    Ok(s) => s,
                    Err(e) => {
                        let code = match e {
                            SinkError::Busy(_) => RefuseCode::Busy,
                            SinkError::Refused(_) => RefuseCode::BadDataset,
                            _ => RefuseCode::SinkFailed,
                        };
                        let (m, err) = *refuse(code, e.to_string());
                        refuse_conn(&conn, &mut send, &shared, m, err).await;
                        return;
                    }
                };
                let session = ReceiverSession::new(offer.clone(), key.0, version, shared.grace);
                let answer = session.answer();
                let slot = Arc::new(tokio::sync::Mutex::new(Slot { session, sink }));
                let guard = slot.clone().lock_owned().await;
                shared.table().insert(
                    id,
                    Entry {
                        slot,
                        conn: Some(conn.clone()),
                    },
                );
                info!(to = %offer.to.name, size_estimate = ?offer.size_estimate, "session accepted");
                (guard, answer)
            }
        };
        let mut slot = slot;
        let outcome = run_session(&mut slot, &mut send, &mut recv, &mut reader, answer).await;
        match outcome {
            Ok(message) => {
                let stats = slot.session.stats();
                shared.table().remove(&id);
                info!(delivered = stats.delivered, bytes_duplicate = stats.bytes_duplicate, resumes = stats.resumes, "stream complete");
                let _ = send.finish();
                // Wait for the sender to close after reading the report.
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
                let _ = shared.events.send(ServerEvent::Completed { session: id, message, stats });
            }
            Err(RunEnd::Lost(why)) => {
                slot.session.disconnected(Instant::now());
                let mut table = shared.table();
                if let Some(entry) = table.get_mut(&id) {
                    if entry.conn.as_ref().map(|c| c.stable_id()) == Some(conn.stable_id()) {
                        entry.conn = None;
                    }
                }
                warn!(error = %why, delivered = slot.session.stats().delivered, grace_s = shared.grace.as_secs(), "connection lost; keeping the session for the grace period");
            }
            Err(RunEnd::Failed(why)) => {
                shared.table().remove(&id);
                tokio::task::block_in_place(|| slot.sink.abort(&why));
                let report = slot.session.finished(false, 1, None, why.clone());
                let _ = write(&mut send, &report).await;
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                conn.close(close_code::FAILED.into(), why.as_bytes());
                warn!(error = %why, "session failed");
                let _ = shared.events.send(ServerEvent::Failed { session: id, error: why });
            }
        }
    }
    .instrument(span)
    .await
}

/// The decoder in front of `inner` for a packed offer, with the sender's
/// chunk cache when the receiver keeps one.
fn packed_sink(
    shared: &Shared,
    inner: Box<dyn Sink>,
    offer: &crate::message::Offer,
    key: &crate::identity::PublicKey,
) -> Result<Box<dyn Sink>, SinkError> {
    let store = match &shared.caches {
        None => None,
        Some(caches) => Some(
            caches
                .store_for(key, offer.session)
                .map_err(|e| SinkError::Io {
                    path: "chunk cache".into(),
                    source: std::io::Error::other(format!("{e}; check --chunk-cache")),
                })?,
        ),
    };
    let store = store.map(|s| Box::new(s) as Box<dyn fjord_pack::ChunkStore + Send>);
    Ok(Box::new(crate::packed::PackedSink::new(inner, store)))
}

/// The answer to a chunk-inventory request: the sender's cache's
/// promise, or nothing when this receiver keeps no cache.
async fn chunk_inventory(
    shared: &Shared,
    key: &crate::identity::PublicKey,
    session: SessionId,
) -> crate::message::Response {
    use crate::message::Response;
    let Some(caches) = &shared.caches else {
        return Response::ChunkInventory { hashes: Vec::new() };
    };
    match tokio::task::block_in_place(|| caches.inventory(key, session)) {
        Ok(hashes) => {
            info!(%session, chunks = hashes.len(), "chunk inventory promised");
            Response::ChunkInventory { hashes }
        }
        Err(e) => Response::Failed {
            code: RefuseCode::SinkFailed,
            message: format!("the chunk cache cannot be read: {e}; check --chunk-cache"),
        },
    }
}

/// Answers control requests on one stream until the sender closes it.
async fn serve_requests(
    shared: &Shared,
    key: &crate::identity::PublicKey,
    first: crate::message::Request,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    reader: &mut MessageReader,
) {
    let mut next = Some(first);
    while let Some(request) = next.take() {
        let span = match &request {
            crate::message::Request::ChunkInventory { session } => {
                tracing::info_span!("inventory", %session, sender = %key)
            }
            r => tracing::info_span!("request", dataset = %r.dataset(), sender = %key),
        };
        let response = async {
            info!(request = ?request, "control request");
            let response = match request {
                crate::message::Request::ChunkInventory { session } => {
                    chunk_inventory(shared, key, session).await
                }
                request => shared.control.handle(key, request).await,
            };
            if let crate::message::Response::Failed { message, .. } = &response {
                warn!(error = %message, "control request failed");
            }
            response
        }
        .instrument(span)
        .await;
        if write(send, &Message::Response(response)).await.is_err() {
            return;
        }
        next = match read_message(recv, reader).await {
            Ok(Message::Request(r)) => Some(r),
            Ok(other) => {
                warn!(got = other.kind(), "expected a request; closing the stream");
                None
            }
            Err(_) => None, // the sender is done
        };
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}

enum RunEnd {
    Lost(String),
    Failed(String),
}

async fn run_session(
    slot: &mut Slot,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    reader: &mut MessageReader,
    answer: Message,
) -> Result<String, RunEnd> {
    write(send, &answer).await.map_err(RunEnd::Lost)?;
    let mut buf = BytesMut::new();
    loop {
        let msg = read_message(recv, reader).await.map_err(|e| {
            if e.starts_with("undecodable") {
                RunEnd::Failed(e)
            } else {
                RunEnd::Lost(e)
            }
        })?;
        let action = slot
            .session
            .handle(msg)
            .map_err(|e| RunEnd::Failed(e.to_string()))?;
        match action {
            Action::None => {}
            Action::Send(m) => write(send, &m).await.map_err(RunEnd::Lost)?,
            Action::Deliver {
                start,
                end,
                encoding,
                payload,
            } => {
                if encoding != crate::message::FrameEncoding::Raw {
                    return Err(RunEnd::Failed(SinkError::Encoding(encoding).to_string()));
                }
                tokio::task::block_in_place(|| slot.sink.write(start, payload))
                    .map_err(|e| RunEnd::Failed(e.to_string()))?;
                let ack = slot.session.delivered(end);
                buf.clear();
                ack.encode(&mut buf);
                send.write_all(&buf)
                    .await
                    .map_err(|e| RunEnd::Lost(e.to_string()))?;
            }
            Action::Finish { length, .. } => {
                let outcome = tokio::task::block_in_place(|| slot.sink.finish(length))
                    .map_err(|e| RunEnd::Failed(e.to_string()))?;
                let report = slot.session.finished(
                    true,
                    outcome.status,
                    outcome.snapshot_guid,
                    outcome.message.clone(),
                );
                // The stream is committed: a lost report no longer matters
                // for the data, so a failure here is not a session failure.
                let _ = write(send, &report).await;
                return Ok(outcome.message);
            }
        }
    }
}
