//! One transfer on one stream: the admitted offer is taken over, opened
//! (after retiring the detached session it replaces) or refused; then the
//! session runs until it completes, its stream or connection is lost or
//! taken over by a newer stream (it waits for its sender), it fails, or
//! its sender aborts it (it ends at once). Other streams of the
//! connection are never touched: a session ends by finishing or
//! resetting its own stream.

use super::table::{Attached, Entry, Plan, Shared, SharedSlot, Slot};
use super::{read_message, refuse_stream, write, ReadError, ServerEvent};
use bytes::BytesMut;
use fjord_proto::admission::ServerCounters;
use fjord_proto::message::{offer_flags, Message, MessageReader, Offer, RefuseCode, SessionId};
use fjord_proto::receiver::{refuse, Action, ReceiverSession};
use fjord_proto::PublicKey;
use fjord_proto::{close_code, SessionError};
use fjord_sink::{Sink, SinkError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The connection and stream a session runs on.
pub(super) struct Io {
    pub(super) conn: quinn::Connection,
    pub(super) send: quinn::SendStream,
    pub(super) recv: quinn::RecvStream,
    pub(super) reader: MessageReader,
}

/// Aborts the sink of replaced session `id` and drops it.
async fn retire(shared: &Shared, id: SessionId, slot: SharedSlot) {
    let why = "replaced by a new session of the same sender key into the same dataset";
    match tokio::time::timeout(Duration::from_secs(10), slot.lock_owned()).await {
        Ok(mut guard) => {
            let delivered = guard.session.stats().delivered;
            guard.sink.abort(why).await;
            drop(guard);
            warn!(replaced = %id, delivered, "{why}");
        }
        Err(_) => {
            warn!(replaced = %id, "the replaced session is still in use; its sink is dropped when it lets go")
        }
    }
    ServerCounters::bump(&shared.counters.replaced_detached);
    let _ = shared.events.send(ServerEvent::Failed {
        session: id,
        error: why.into(),
    });
}

/// Finds, takes over or creates the session of `offer`, then runs it.
pub(super) async fn serve_offer(
    shared: &Shared,
    key: PublicKey,
    version: u16,
    offer: Offer,
    mut io: Io,
) {
    let conn = io.conn.clone();
    let conn = &conn;
    let id = offer.session;
    let attached = Attached {
        conn: conn.clone(),
        stop: Arc::new(tokio::sync::Notify::new()),
    };
    let (mut slot, answer) = match shared.admit_offer(&key, &offer, &attached) {
        Plan::Busy(b) => {
            shared.note_busy(&key, &b, "offer");
            let (m, err) = *refuse(RefuseCode::Busy, b.to_string());
            refuse_stream(conn, &mut io.send, shared, None, m, err).await;
            return;
        }
        Plan::Refuse(r) => {
            let counter = if r.is_takeover() {
                &shared.counters.takeovers_refused
            } else {
                &shared.counters.refused_other
            };
            ServerCounters::bump(counter);
            warn!(sender = %key, reason = %r, "offer refused; no held session was touched");
            let (m, err) = *refuse(r.code(), r.peer_reason());
            refuse_stream(conn, &mut io.send, shared, None, m, err).await;
            return;
        }
        Plan::Replay(report) => {
            ServerCounters::bump(&shared.counters.reports_replayed);
            info!(sender = %key, success = report.success, delivered = report.delivered, "the session had ended; its report is sent again");
            let _ = write(&mut io.send, &Message::Report(report)).await;
            let _ = io.send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(5), io.send.stopped()).await;
            return;
        }
        Plan::Takeover(slot, old) => {
            if let Some(old) = old {
                // Its task lets go of the slot; the old stream's connection
                // may carry other sessions and stays open.
                old.stop.notify_one();
            }
            let guard = tokio::time::timeout(Duration::from_secs(10), slot.lock_owned()).await;
            let reattached = match guard {
                Ok(mut guard) => match guard.session.reattach(&offer, &key.0, version) {
                    Ok(a) => Ok((guard, a)),
                    Err(r) => Err(*r),
                },
                Err(_) => Err(*refuse(
                    RefuseCode::Busy,
                    "the session is still busy with its previous connection".into(),
                )),
            };
            match reattached {
                Ok((guard, a)) => {
                    info!(offset = guard.session.stats().delivered, "session resumed");
                    (guard, a)
                }
                Err((m, err)) => {
                    // Leave the session detached for its grace period.
                    if let Some(e) = shared.state().sessions.get_mut(&id) {
                        if e.conn.as_ref().is_some_and(|a| a.same(&attached)) {
                            e.conn = None;
                        }
                    }
                    let counter = Some(&shared.counters.refused_other);
                    refuse_stream(conn, &mut io.send, shared, counter, m, err).await;
                    return;
                }
            }
        }
        Plan::Open(ticket, replaced) => {
            if let Some((old, slot)) = replaced {
                // The old sink must be gone before the factory opens the
                // new one: a target takes one receive at a time.
                retire(shared, old, slot).await;
            }
            match open_session(shared, &key, version, &offer).await {
                Ok(slot) => {
                    let guard = slot.clone().lock_owned().await;
                    let answer = guard.session.answer();
                    shared.state().sessions.insert(
                        id,
                        Entry {
                            slot,
                            conn: Some(attached.clone()),
                            key,
                            offer: offer.clone(),
                        },
                    );
                    drop(ticket);
                    info!(to = %offer.to.name, size_estimate = ?offer.size_estimate, "session accepted");
                    (guard, answer)
                }
                Err(e) => {
                    drop(ticket);
                    let code = e.refuse_code();
                    let counter = match code {
                        RefuseCode::Busy => &shared.counters.refused_busy,
                        _ => &shared.counters.refused_other,
                    };
                    let (m, err) = *refuse(code, e.to_string());
                    refuse_stream(conn, &mut io.send, shared, Some(counter), m, err).await;
                    return;
                }
            }
        }
    };
    let outcome = tokio::select! {
        outcome = run_session(&mut slot, &mut io, answer) => outcome,
        () = attached.stop.notified() => Err(RunEnd::Lost("taken over by a newer stream".into())),
    };
    if let Err(RunEnd::Lost(_)) = &outcome {
        // Tell the sender this stream is over (it may be alive).
        let _ = io.send.reset(close_code::TAKEN_OVER.into());
        let _ = io.recv.stop(close_code::TAKEN_OVER.into());
    }
    let Io { mut send, .. } = io;
    match outcome {
        Ok((message, report)) => {
            let stats = slot.session.stats();
            shared.state().sessions.remove(&id);
            shared.record_ended(id, key, &report);
            // The sink goes now, not after the goodbye (it finished: its
            // target is free for the next offer).
            drop(slot);
            info!(
                delivered = stats.delivered,
                bytes_duplicate = stats.bytes_duplicate,
                resumes = stats.resumes,
                "stream complete"
            );
            let _ = send.finish();
            // Wait (bounded) for the sender's transport to have the report.
            let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
            let _ = shared.events.send(ServerEvent::Completed {
                session: id,
                message,
                stats,
            });
        }
        Err(RunEnd::Lost(why)) => {
            slot.session.disconnected(Instant::now());
            if let Some(entry) = shared.state().sessions.get_mut(&id) {
                if entry.conn.as_ref().is_some_and(|a| a.same(&attached)) {
                    entry.conn = None;
                }
            }
            warn!(error = %why, delivered = slot.session.stats().delivered, grace_s = shared.grace.as_secs(), "connection lost; keeping the session for the grace period");
        }
        Err(RunEnd::Failed(why, status)) => {
            warn!(error = %why, status, "session failed");
            let event = why.clone();
            end_session(shared, key, send, slot, why, status, event).await;
        }
        Err(RunEnd::Aborted(why)) => {
            ServerCounters::bump(&shared.counters.aborted_by_sender);
            warn!(sender = %key, error = %why, "the sender aborted the session; ending it now");
            let event = format!("the sender aborted the session: {why}");
            end_session(shared, key, send, slot, why, 1, event).await;
        }
    }
}

/// Ends a failed or aborted session at once: aborts its sink, takes it
/// out of the table (its target is then free), reports (with the
/// downstream's `status`) and finishes the stream (the connection stays).
async fn end_session(
    shared: &Shared,
    key: PublicKey,
    mut send: quinn::SendStream,
    mut slot: tokio::sync::OwnedMutexGuard<Slot>,
    why: String,
    status: i32,
    event: String,
) {
    let id = slot.session.offer().session;
    slot.sink.abort(&why).await;
    shared.state().sessions.remove(&id);
    let report = slot.session.finished(false, status, None, why.clone());
    shared.record_ended(id, key, &report);
    drop(slot);
    let _ = write(&mut send, &report).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    let _ = shared.events.send(ServerEvent::Failed {
        session: id,
        error: event,
    });
}

/// Opens the sink of a new session (after admission) and its state.
async fn open_session(
    shared: &Shared,
    key: &PublicKey,
    version: u16,
    offer: &Offer,
) -> Result<SharedSlot, SinkError> {
    // Opening may run zfs and wait for it, and a packed offer opens its
    // chunk cache on disk: both off the runtime.
    let (factory, caches, o, k) = (
        shared.factory.clone(),
        shared.caches.clone(),
        offer.clone(),
        *key,
    );
    let sink = tokio::task::spawn_blocking(move || {
        let sink = factory.open(&o, &k)?;
        if o.flags & offer_flags::PACKED != 0 {
            packed_sink(caches.as_deref(), sink, &o, &k)
        } else {
            Ok(sink)
        }
    })
    .await
    .map_err(|e| SinkError::Internal(format!("opening the sink failed: {e}")))??;
    // Decoding, verifying and writing run beside the network loop.
    let sink = fjord_sink::threaded::ThreadedSink::spawn(sink)
        .map_err(|e| SinkError::Internal(format!("cannot start the sink thread: {e}")))?;
    let session = ReceiverSession::new(offer.clone(), key.0, version, shared.grace);
    Ok(Arc::new(tokio::sync::Mutex::new(Slot { session, sink })))
}

/// The decoder in front of `inner` for a packed offer, with the sender's
/// chunk cache when the receiver keeps one.
fn packed_sink(
    caches: Option<&fjord_sink::chunk_cache::ChunkCaches>,
    inner: Box<dyn Sink>,
    offer: &Offer,
    key: &PublicKey,
) -> Result<Box<dyn Sink>, SinkError> {
    let store = match caches {
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
    Ok(Box::new(fjord_sink::packed::PackedSink::new(inner, store)))
}

enum RunEnd {
    /// The connection went away; the session waits for its sender.
    Lost(String),
    /// The session failed for good: why, and the downstream status for
    /// the sender's report.
    Failed(String, i32),
    /// The sender aborted it (by message or by closing with
    /// [`close_code::ABORTED`]).
    Aborted(String),
}

/// A sink failure ends the session; the report carries the downstream's
/// exit status when it has one.
fn sink_failed(e: SinkError) -> RunEnd {
    RunEnd::Failed(e.to_string(), e.report_status())
}

/// How a broken stream or connection ends the session: aborted if the
/// sender reset the stream or closed the connection with
/// [`close_code::ABORTED`], lost otherwise.
fn connection_end(conn: &quinn::Connection, reset: Option<quinn::VarInt>, why: String) -> RunEnd {
    if reset == Some(close_code::ABORTED.into()) {
        return RunEnd::Aborted(format!("the sender reset the stream: {why}"));
    }
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code == close_code::ABORTED.into() =>
        {
            RunEnd::Aborted(String::from_utf8_lossy(&c.reason).into_owned())
        }
        _ => RunEnd::Lost(why),
    }
}

/// Runs a session on its stream until it ends; on success, the
/// downstream's message and the report sent.
async fn run_session(
    slot: &mut Slot,
    io: &mut Io,
    answer: Message,
) -> Result<(String, Message), RunEnd> {
    let conn = io.conn.clone();
    let lost = |e: &dyn std::fmt::Display| connection_end(&conn, None, e.to_string());
    write(&mut io.send, &answer).await.map_err(|e| lost(&e))?;
    let mut buf = BytesMut::new();
    loop {
        let msg = match read_message(&mut io.recv, &mut io.reader).await {
            Ok(m) => m,
            Err(e @ ReadError::Undecodable(_)) => return Err(RunEnd::Failed(e.to_string(), 1)),
            Err(ReadError::Read(quinn::ReadError::Reset(code))) => {
                return Err(connection_end(
                    &conn,
                    Some(code),
                    format!("stream reset with code {code}"),
                ))
            }
            Err(e) => return Err(lost(&e)),
        };
        let action = slot.session.handle(msg).map_err(|e| match e {
            SessionError::PeerAborted(why) => RunEnd::Aborted(why),
            e => RunEnd::Failed(e.to_string(), 1),
        })?;
        match action {
            Action::None => {}
            Action::Send(m) => write(&mut io.send, &m).await.map_err(|e| lost(&e))?,
            Action::Deliver {
                start,
                end,
                encoding,
                payload,
            } => {
                if encoding != fjord_proto::message::FrameEncoding::Raw {
                    return Err(sink_failed(SinkError::Encoding(encoding)));
                }
                slot.sink.write(start, payload).await.map_err(sink_failed)?;
                let ack = slot.session.delivered(end);
                buf.clear();
                ack.encode(&mut buf);
                io.send.write_all(&buf).await.map_err(|e| lost(&e))?;
            }
            Action::Finish { length, .. } => {
                let outcome = slot.sink.finish(length).await.map_err(sink_failed)?;
                let report = slot.session.finished(
                    true,
                    outcome.status,
                    outcome.snapshot_guid,
                    outcome.message.clone(),
                );
                // The stream is committed: a lost report no longer matters
                // for the data, so a failure here is not a session failure.
                let _ = write(&mut io.send, &report).await;
                return Ok((outcome.message, report));
            }
        }
    }
}
