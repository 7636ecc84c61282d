//! Admission: whether a connection, an offer or a control request is
//! taken now, decided by pure functions over counts: no sockets, no
//! clocks, no locks. The server counts; [`Admission`] decides.
//!
//! # Fair sharing
//!
//! Every limit but two is per client key: one key holding many slow
//! sessions, connections or requests reaches its own limit and is
//! answered `Busy` (the sender retries with backoff within its grace),
//! while other keys keep theirs. The two receiver-wide limits are the
//! global session cap (the server's `max_sessions`) and the memory
//! budget.
//!
//! # Memory budget
//!
//! Each session is charged [`Limits::session_memory_bytes`], the most its
//! sink side can hold: the unverified bytes a sink holds back (its held
//! limit, `--max-held-mib`), the sink thread's queue of frames, a packed
//! transfer's dedup window and the message being decoded. Each open
//! connection is charged [`Limits::connection_charge`]: the QUIC receive
//! window of the connection (which caps what all its streams buffer in
//! quinn) and one message and one read per stream it may have open. A new
//! session is admitted only while
//!
//! ```text
//! (sessions + 1) × session_memory_bytes + connections × connection_charge ≤ memory_budget_bytes
//! ```
//!
//! # Streams
//!
//! One connection carries many bidirectional streams, each a transfer or
//! a control stream (see the QUIC driver, `fjord_transport::server`). A client may have at most
//! [`Limits::streams_per_connection`] streams open on one connection at
//! once: quinn enforces it (the QUIC stream credit), so a client holding
//! a valid key cannot make the receiver hold more; past it the client's
//! next stream waits for credit. What the streams do is counted as
//! before: sessions and control requests per client key.
//!
//! where sessions counts every held session (attached, detached in its
//! grace period, or having its sink opened). Connections themselves are
//! capped per client, not by the budget (a sender resuming its own
//! session is never refused for memory), so the receiver's memory stays
//! below `memory_budget_bytes + clients × per_client_connections ×
//! connection_charge` plus the chunk inventories (at most
//! `per_client_leases` unclaimed ones per client).
//!

use crate::key::PublicKey;
use crate::message::{Offer, RefuseCode, SessionId, MAX_MESSAGE_LEN, MAX_PAYLOAD_LEN};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use thiserror::Error;

/// The held limit the default session charge is computed for:
/// `fjord-recv serve --max-held-mib`'s default, 256 MiB.
pub const DEFAULT_HELD_LIMIT: u64 = 256 << 20;

/// The largest dedup window a packed transfer's decoder holds (fjord-pack's
/// `MAX_WINDOW_BYTES`; `fjord-transport` checks that they agree).
pub const PACKED_WINDOW_BYTES: u64 = 128 << 20;

/// Frames the sink thread queues ahead of the writer
/// (`threaded::QUEUE_FRAMES`), each at most [`MAX_PAYLOAD_LEN`] bytes.
const SINK_QUEUE_FRAMES: u64 = 16;

/// The largest chunk the server reads from a QUIC stream at once.
const READ_CHUNK: u64 = 1 << 20;

/// The most streams one connection may have open at once, whatever the
/// limits (a limit of 0, no limit, means this many).
pub const MAX_STREAMS_PER_CONNECTION: u64 = 64;

/// The most transfers a connection's receive window is sized for
/// ([`Limits::connection_window`]).
pub const MAX_WINDOWED_TRANSFERS: u64 = 16;

/// What one receiver grants each client, and the receiver as a whole.
/// A limit of 0 means no limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Sessions one client key may hold at once: attached, detached in
    /// their grace period, or being opened. Default 8.
    pub per_client_sessions: usize,
    /// Connections one client key may have open at once (transfers and
    /// control requests). Beyond it a new connection is closed with
    /// [`close_code::BUSY`](crate::close_code::BUSY) and the sender
    /// retries. Default 16.
    pub per_client_connections: usize,
    /// Control requests one client key may have in progress at once;
    /// further ones are answered `Busy`. Default 4.
    pub per_client_requests: usize,
    /// Chunk-cache inventories one client key may have promised and not
    /// yet claimed by a transfer; asking for more withdraws its oldest.
    /// Default 8.
    pub per_client_leases: usize,
    /// How long a new stream may take to send its hello and its offer (or
    /// first control request), how long a control stream may wait between
    /// requests, and how long a connection may stay without any stream
    /// open (its first one included). Default 20 s.
    pub offer_deadline: Duration,
    /// What all sessions and connections together may be charged (see
    /// the module docs). Default 8 GiB.
    pub memory_budget_bytes: u64,
    /// What one session is charged against the budget: use
    /// [`Limits::session_memory_for`] with the sink's held limit. Default:
    /// that of [`DEFAULT_HELD_LIMIT`] (about 672 MiB).
    pub session_memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_client_sessions: 8,
            per_client_connections: 16,
            per_client_requests: 4,
            per_client_leases: 8,
            offer_deadline: Duration::from_secs(20),
            memory_budget_bytes: 8 << 30,
            session_memory_bytes: Limits::session_memory_for(DEFAULT_HELD_LIMIT),
        }
    }
}

impl Limits {
    /// The most a session's sink side holds when its sink holds back at
    /// most `held_limit` unverified bytes: those, the sink thread's queue,
    /// a packed transfer's largest dedup window and two messages (the one
    /// decoded and the one being assembled).
    pub fn session_memory_for(held_limit: u64) -> u64 {
        held_limit
            .saturating_add(SINK_QUEUE_FRAMES * MAX_PAYLOAD_LEN as u64)
            .saturating_add(PACKED_WINDOW_BYTES)
            .saturating_add(2 * MAX_MESSAGE_LEN as u64)
    }

    /// The most one connection whose streams have a flow-control window of
    /// `stream_window` bytes buffers: its QUIC receive window, one message
    /// and one read.
    pub fn connection_memory(stream_window: u64) -> u64 {
        stream_window
            .saturating_mul(2)
            .saturating_add(MAX_MESSAGE_LEN as u64)
            .saturating_add(READ_CHUNK)
    }

    /// The most bidirectional streams a client may have open on one
    /// connection at once: one per session and one per control request it
    /// may hold (`per_client_sessions + per_client_requests`), at least 1
    /// and at most [`MAX_STREAMS_PER_CONNECTION`] (a limit of 0 counts as
    /// that much).
    pub fn streams_per_connection(&self) -> u64 {
        let or_max = |n: usize| match n {
            0 => MAX_STREAMS_PER_CONNECTION,
            n => n as u64,
        };
        or_max(self.per_client_sessions)
            .saturating_add(or_max(self.per_client_requests))
            .clamp(1, MAX_STREAMS_PER_CONNECTION)
    }

    /// The QUIC receive window of one connection (what all its streams
    /// together may have sent and the receiver not yet read): one stream
    /// window per transfer it may carry (`per_client_sessions`, at least
    /// 2, at most [`MAX_WINDOWED_TRANSFERS`]), so that transfers whose
    /// sinks stall do not starve the others of the shared connection.
    pub fn connection_window(&self, stream_window: u64) -> u64 {
        let transfers = match self.per_client_sessions {
            0 => MAX_WINDOWED_TRANSFERS,
            n => (n as u64).clamp(2, MAX_WINDOWED_TRANSFERS),
        };
        stream_window.saturating_mul(transfers)
    }

    /// What one connection with streams of `stream_window` is charged against the
    /// budget: its receive window ([`Limits::connection_window`]) and, for
    /// each stream it may have open ([`Limits::streams_per_connection`]),
    /// the message and the read that stream's reader may hold. At least
    /// [`Limits::connection_memory`].
    pub fn connection_charge(&self, stream_window: u64) -> u64 {
        let per_stream = (MAX_MESSAGE_LEN as u64).saturating_add(READ_CHUNK);
        self.connection_window(stream_window)
            .saturating_add(self.streams_per_connection().saturating_mul(per_stream))
            .max(Limits::connection_memory(stream_window))
    }

    /// Checks that the budget can hold at least one session with its
    /// connection, and that the offer deadline is usable.
    pub fn validate(&self, stream_window: u64) -> Result<(), String> {
        let one = self
            .session_memory_bytes
            .saturating_add(self.connection_charge(stream_window));
        if self.memory_budget_bytes != 0 && self.memory_budget_bytes < one {
            return Err(format!(
                "the memory budget of {} bytes cannot hold one session ({} bytes with its connection); raise it or lower the held limit",
                self.memory_budget_bytes, one
            ));
        }
        if self.offer_deadline.is_zero() {
            return Err("the offer deadline must be above 0".into());
        }
        Ok(())
    }
}

/// What one client key holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientLoad {
    /// Sessions with a connection, or having their sink opened.
    pub sessions_attached: usize,
    /// Sessions without a connection, in their grace period.
    pub sessions_detached: usize,
    /// Open connections (this one included, once admitted).
    pub connections: usize,
    /// Control requests in progress.
    pub requests: usize,
}

impl ClientLoad {
    /// Every session the client holds.
    pub fn sessions(&self) -> usize {
        self.sessions_attached + self.sessions_detached
    }
}

/// What the receiver holds now, over all clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalLoad {
    /// Held sessions (attached, detached, or being opened).
    pub sessions: usize,
    /// Open connections.
    pub connections: usize,
}

/// Where a held session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A connection carries it.
    Attached,
    /// Its connection is gone; it waits for its sender for the grace period.
    Detached,
    /// Admitted; its sink is being opened.
    Opening,
}

/// A held session, as admission sees it.
#[derive(Clone, Copy, Debug)]
pub struct SessionView<'a> {
    /// Its id.
    pub id: SessionId,
    /// The key that offered it.
    pub key: &'a PublicKey,
    /// Its original offer.
    pub offer: &'a Offer,
    /// Where it is.
    pub holder: Holder,
}

/// Why something is refused for now: the sender retries with backoff.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Busy {
    /// The client holds its limit of sessions.
    #[error("this sender key already holds {limit} sessions, its limit at this receiver")]
    ClientSessions {
        /// The limit.
        limit: usize,
    },
    /// The client has its limit of connections open.
    #[error("this sender key already has {limit} connections open, its limit at this receiver")]
    ClientConnections {
        /// The limit.
        limit: usize,
    },
    /// The client has its limit of control requests in progress.
    #[error("this sender key already has {limit} control requests in progress, its limit at this receiver")]
    ClientRequests {
        /// The limit.
        limit: usize,
    },
    /// The receiver holds its global limit of sessions.
    #[error("the receiver is at its limit of {limit} concurrent transfers")]
    GlobalSessions {
        /// The limit.
        limit: usize,
    },
    /// The memory budget has no room for another session.
    #[error("the receiver's memory budget of {budget} bytes has no room for another transfer ({reserved} bytes reserved, one needs {need})")]
    Memory {
        /// The budget.
        budget: u64,
        /// What is charged now.
        reserved: u64,
        /// What the session would be charged.
        need: u64,
    },
    /// The client already runs a transfer into this dataset.
    #[error("a transfer of this sender key into {dataset} is in progress (session {session})")]
    DatasetInUse {
        /// The dataset.
        dataset: String,
        /// The transfer holding it.
        session: SessionId,
    },
}

impl Busy {
    /// True for a limit or the budget (counted as `refused_limit`), false
    /// for a target in use (counted as `refused_busy`).
    pub fn is_limit(&self) -> bool {
        !matches!(self, Busy::DatasetInUse { .. })
    }
}

/// Why an offer is refused for good.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    /// A resuming offer names a session this receiver does not hold.
    #[error("this receiver does not know the session (its grace period expired, or the receiver restarted); send the stream again")]
    UnknownSession,
    /// The offer names a session another key holds. The peer is told
    /// [`Refusal::UnknownSession`]'s text: it learns nothing of the session.
    #[error("the offer names a session held by another sender key; the session was not touched")]
    ForeignSession,
    /// The offer names the client's own session but differs from its
    /// original offer.
    #[error("the resumed offer differs from the session's original offer in its {what}")]
    OfferMismatch {
        /// The differing part.
        what: &'static str,
    },
}

impl Refusal {
    /// The code sent to the peer.
    pub fn code(&self) -> RefuseCode {
        match self {
            Refusal::UnknownSession | Refusal::ForeignSession => RefuseCode::UnknownSession,
            Refusal::OfferMismatch { .. } => RefuseCode::Other,
        }
    }

    /// The reason sent to the peer.
    pub fn peer_reason(&self) -> String {
        match self {
            Refusal::ForeignSession => Refusal::UnknownSession.to_string(),
            other => other.to_string(),
        }
    }

    /// True when the offer named a held session without owning it as
    /// offered (counted as `takeovers_refused`).
    pub fn is_takeover(&self) -> bool {
        matches!(
            self,
            Refusal::ForeignSession | Refusal::OfferMismatch { .. }
        )
    }
}

/// The answer to an offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Open a new session.
    Accept,
    /// The offer continues its own session: move it to this connection.
    Takeover,
    /// Abort this detached session of the same key and dataset (its sink
    /// first), then open the new one in its place.
    Replace(SessionId),
    /// Not now; the sender retries.
    Busy(Busy),
    /// Never.
    Refuse(Refusal),
}

/// Where the offer differs from a held session's original one, if it does.
pub fn offer_mismatch(held: &Offer, offer: &Offer) -> Option<&'static str> {
    if held.dataset != offer.dataset {
        Some("dataset")
    } else if held.to != offer.to {
        Some("snapshot")
    } else if held.from != offer.from {
        Some("base snapshot")
    } else if held.flags != offer.flags {
        Some("flags")
    } else {
        None
    }
}

/// The admission policy of one receiver.
#[derive(Clone, Debug)]
pub struct Admission {
    limits: Limits,
    max_sessions: usize,
    connection_memory: u64,
}

impl Admission {
    /// `limits`, a global cap of `max_sessions` (0: none), and connections
    /// charged `connection_memory` bytes each.
    pub fn new(limits: Limits, max_sessions: usize, connection_memory: u64) -> Admission {
        Admission {
            limits,
            max_sessions,
            connection_memory,
        }
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What `global` is charged against the memory budget.
    pub fn reserved(&self, global: &GlobalLoad) -> u64 {
        (global.sessions as u64)
            .saturating_mul(self.limits.session_memory_bytes)
            .saturating_add((global.connections as u64).saturating_mul(self.connection_memory))
    }

    /// May `client` (with `client.connections` open before this one) open
    /// another connection?
    pub fn connection(&self, client: &ClientLoad) -> Result<(), Busy> {
        let limit = self.limits.per_client_connections;
        if limit != 0 && client.connections >= limit {
            return Err(Busy::ClientConnections { limit });
        }
        Ok(())
    }

    /// May `client` start another control request?
    pub fn request(&self, client: &ClientLoad) -> Result<(), Busy> {
        let limit = self.limits.per_client_requests;
        if limit != 0 && client.requests >= limit {
            return Err(Busy::ClientRequests { limit });
        }
        Ok(())
    }

    /// The answer to `offer` from `key`. `same_id` is the held session
    /// with the offer's id, if any; `same_dataset` the other sessions of
    /// `key` into the offer's dataset. A takeover is decided from the
    /// key and the offer alone, before anything touches the held
    /// session; replacing a detached session and taking over one never
    /// count against the limits (the number of sessions does not grow).
    pub fn offer(
        &self,
        key: &PublicKey,
        offer: &Offer,
        client: &ClientLoad,
        global: &GlobalLoad,
        same_id: Option<SessionView<'_>>,
        same_dataset: &[SessionView<'_>],
    ) -> Decision {
        if let Some(held) = same_id {
            if held.key != key {
                return Decision::Refuse(Refusal::ForeignSession);
            }
            if let Some(what) = offer_mismatch(held.offer, offer) {
                return Decision::Refuse(Refusal::OfferMismatch { what });
            }
            if held.holder == Holder::Opening {
                return Decision::Busy(Busy::DatasetInUse {
                    dataset: offer.dataset.clone(),
                    session: held.id,
                });
            }
            return Decision::Takeover;
        }
        if offer.resuming {
            return Decision::Refuse(Refusal::UnknownSession);
        }
        let mine = same_dataset
            .iter()
            .filter(|s| s.key == key && s.offer.dataset == offer.dataset && s.id != offer.session);
        let mut detached = None;
        for s in mine {
            match s.holder {
                Holder::Attached | Holder::Opening => {
                    return Decision::Busy(Busy::DatasetInUse {
                        dataset: offer.dataset.clone(),
                        session: s.id,
                    })
                }
                Holder::Detached => detached = detached.or(Some(s.id)),
            }
        }
        if let Some(old) = detached {
            return Decision::Replace(old);
        }
        let limit = self.limits.per_client_sessions;
        if limit != 0 && client.sessions() >= limit {
            return Decision::Busy(Busy::ClientSessions { limit });
        }
        if self.max_sessions != 0 && global.sessions >= self.max_sessions {
            return Decision::Busy(Busy::GlobalSessions {
                limit: self.max_sessions,
            });
        }
        let budget = self.limits.memory_budget_bytes;
        let need = self.limits.session_memory_bytes;
        let reserved = self.reserved(global);
        if budget != 0 && reserved.saturating_add(need) > budget {
            return Decision::Busy(Busy::Memory {
                budget,
                reserved,
                need,
            });
        }
        Decision::Accept
    }
}

/// What a receiver refused, ended or replaced, for the operator's status
/// and metrics. Every count only grows.
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Offers answered `Busy` because the target was in use (a transfer of
    /// the same key into the dataset, or the sink said so).
    pub refused_busy: AtomicU64,
    /// Connections, offers and control requests refused by a per-client
    /// limit, the global session limit or the memory budget.
    pub refused_limit: AtomicU64,
    /// Other refusals: unknown keys, protocol versions, malformed or
    /// unknown sessions, refused datasets, failed sinks.
    pub refused_other: AtomicU64,
    /// Offers that named a held session with another key or another
    /// offer; the held session was left alone.
    pub takeovers_refused: AtomicU64,
    /// Connections and streams closed because no stream, offer or request
    /// came in time.
    pub offer_deadline_expired: AtomicU64,
    /// Connections admitted (each one TLS handshake), in total.
    pub connections_accepted: AtomicU64,
    /// Bidirectional streams accepted (transfers and control streams), in
    /// total.
    pub streams_accepted: AtomicU64,
    /// Sessions ended at once because their sender aborted.
    pub aborted_by_sender: AtomicU64,
    /// Detached sessions replaced by a new session of the same key into
    /// the same dataset.
    pub replaced_detached: AtomicU64,
    /// Detached sessions abandoned when their grace period ran out.
    pub grace_expired: AtomicU64,
    /// Resuming offers of sessions that had already ended, answered with
    /// their report again (the first was lost with a connection).
    pub reports_replayed: AtomicU64,
    /// Chunk inventories withdrawn because their client asked for more
    /// than its limit of unclaimed ones.
    pub leases_displaced: AtomicU64,
}

impl ServerCounters {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Snapshot;

    fn offer(id: u128, dataset: &str, resuming: bool) -> Offer {
        Offer {
            session: SessionId(id),
            resuming,
            dataset: dataset.into(),
            from: None,
            to: Snapshot {
                name: "tank/fs@a".into(),
                guid: 9,
            },
            flags: 0,
            size_estimate: None,
        }
    }

    fn admission(limits: Limits, max_sessions: usize) -> Admission {
        Admission::new(limits, max_sessions, 10)
    }

    fn small() -> Limits {
        Limits {
            per_client_sessions: 2,
            per_client_connections: 3,
            per_client_requests: 1,
            per_client_leases: 2,
            offer_deadline: Duration::from_secs(1),
            memory_budget_bytes: 1000,
            session_memory_bytes: 200,
        }
    }

    const ALICE: PublicKey = PublicKey([1; 32]);
    const BOB: PublicKey = PublicKey([2; 32]);

    fn view<'a>(id: u128, key: &'a PublicKey, offer: &'a Offer, holder: Holder) -> SessionView<'a> {
        SessionView {
            id: SessionId(id),
            key,
            offer,
            holder,
        }
    }

    #[test]
    fn a_fresh_offer_is_accepted_within_the_limits() {
        let a = admission(small(), 0);
        let d = a.offer(
            &ALICE,
            &offer(1, "backup/a", false),
            &ClientLoad::default(),
            &GlobalLoad::default(),
            None,
            &[],
        );
        assert_eq!(d, Decision::Accept);
    }

    #[test]
    fn per_client_session_limit_does_not_touch_other_keys() {
        let a = admission(small(), 0);
        let full = ClientLoad {
            sessions_attached: 1,
            sessions_detached: 1,
            connections: 1,
            requests: 0,
        };
        let global = GlobalLoad {
            sessions: 2,
            connections: 3,
        };
        assert_eq!(
            a.offer(
                &ALICE,
                &offer(3, "backup/c", false),
                &full,
                &global,
                None,
                &[]
            ),
            Decision::Busy(Busy::ClientSessions { limit: 2 })
        );
        let bob = ClientLoad {
            connections: 1,
            ..ClientLoad::default()
        };
        assert_eq!(
            a.offer(&BOB, &offer(4, "backup/b", false), &bob, &global, None, &[]),
            Decision::Accept
        );
    }

    #[test]
    fn the_global_cap_and_the_memory_budget_answer_busy() {
        let a = admission(small(), 3);
        let g = GlobalLoad {
            sessions: 3,
            connections: 1,
        };
        assert_eq!(
            a.offer(
                &BOB,
                &offer(1, "backup/b", false),
                &ClientLoad::default(),
                &g,
                None,
                &[]
            ),
            Decision::Busy(Busy::GlobalSessions { limit: 3 })
        );
        // 4 sessions × 200 + 2 connections × 10 = 820; one more needs 200.
        let a = admission(small(), 0);
        let g = GlobalLoad {
            sessions: 4,
            connections: 2,
        };
        assert_eq!(a.reserved(&g), 820);
        match a.offer(
            &BOB,
            &offer(1, "backup/b", false),
            &ClientLoad::default(),
            &g,
            None,
            &[],
        ) {
            Decision::Busy(b @ Busy::Memory { .. }) => assert!(b.is_limit()),
            d => panic!("{d:?}"),
        }
        let g = GlobalLoad {
            sessions: 3,
            connections: 2,
        };
        assert_eq!(
            a.offer(
                &BOB,
                &offer(1, "backup/b", false),
                &ClientLoad::default(),
                &g,
                None,
                &[]
            ),
            Decision::Accept
        );
        let unlimited = Limits {
            memory_budget_bytes: 0,
            per_client_sessions: 0,
            ..small()
        };
        let g = GlobalLoad {
            sessions: 1000,
            connections: 1000,
        };
        let many = ClientLoad {
            sessions_attached: 1000,
            ..ClientLoad::default()
        };
        assert_eq!(
            admission(unlimited, 0).offer(&BOB, &offer(1, "b", false), &many, &g, None, &[]),
            Decision::Accept
        );
    }

    #[test]
    fn a_detached_session_of_the_same_key_and_dataset_is_replaced() {
        let a = admission(small(), 1);
        let old = offer(1, "backup/a", false);
        let full = ClientLoad {
            sessions_detached: 2,
            connections: 1,
            ..ClientLoad::default()
        };
        let g = GlobalLoad {
            sessions: 1,
            connections: 1,
        };
        let held = [view(1, &ALICE, &old, Holder::Detached)];
        // Replacing never counts against the limits: the count stays.
        assert_eq!(
            a.offer(&ALICE, &offer(2, "backup/a", false), &full, &g, None, &held),
            Decision::Replace(SessionId(1))
        );
        // Attached (or still opening): busy, never replaced.
        for holder in [Holder::Attached, Holder::Opening] {
            let held = [view(1, &ALICE, &old, holder)];
            match a.offer(&ALICE, &offer(2, "backup/a", false), &full, &g, None, &held) {
                Decision::Busy(b @ Busy::DatasetInUse { .. }) => assert!(!b.is_limit()),
                d => panic!("{holder:?}: {d:?}"),
            }
        }
        // Another key's detached session of that dataset is not this
        // key's to replace.
        let held = [view(1, &BOB, &old, Holder::Detached)];
        assert_eq!(
            a.offer(
                &ALICE,
                &offer(2, "backup/a", false),
                &ClientLoad::default(),
                &GlobalLoad::default(),
                None,
                &held
            ),
            Decision::Accept
        );
    }

    #[test]
    fn a_takeover_checks_key_and_offer_first() {
        let a = admission(small(), 0);
        let held_offer = offer(7, "backup/a", false);
        let busy_client = ClientLoad {
            sessions_attached: 2,
            connections: 3,
            ..ClientLoad::default()
        };
        let g = GlobalLoad {
            sessions: 100,
            connections: 100,
        };
        let held = view(7, &ALICE, &held_offer, Holder::Attached);
        // The owner resumes, whatever the limits.
        assert_eq!(
            a.offer(
                &ALICE,
                &offer(7, "backup/a", true),
                &busy_client,
                &g,
                Some(held),
                &[]
            ),
            Decision::Takeover
        );
        // Another key guessing the id: refused, and told nothing.
        let d = a.offer(
            &BOB,
            &offer(7, "backup/a", true),
            &ClientLoad::default(),
            &g,
            Some(held),
            &[],
        );
        match d {
            Decision::Refuse(r @ Refusal::ForeignSession) => {
                assert!(r.is_takeover());
                assert_eq!(r.code(), RefuseCode::UnknownSession);
                assert_eq!(r.peer_reason(), Refusal::UnknownSession.to_string());
            }
            d => panic!("{d:?}"),
        }
        // The owner with another offer.
        let mut other = offer(7, "backup/b", true);
        assert_eq!(
            a.offer(&ALICE, &other, &busy_client, &g, Some(held), &[]),
            Decision::Refuse(Refusal::OfferMismatch { what: "dataset" })
        );
        other.dataset = "backup/a".into();
        other.to.guid = 10;
        assert_eq!(
            a.offer(&ALICE, &other, &busy_client, &g, Some(held), &[]),
            Decision::Refuse(Refusal::OfferMismatch { what: "snapshot" })
        );
        other.to.guid = 9;
        other.flags = 1;
        assert_eq!(
            a.offer(&ALICE, &other, &busy_client, &g, Some(held), &[]),
            Decision::Refuse(Refusal::OfferMismatch { what: "flags" })
        );
        // Still opening: busy until it is held.
        let opening = view(7, &ALICE, &held_offer, Holder::Opening);
        assert!(matches!(
            a.offer(
                &ALICE,
                &offer(7, "backup/a", false),
                &busy_client,
                &g,
                Some(opening),
                &[]
            ),
            Decision::Busy(Busy::DatasetInUse { .. })
        ));
    }

    #[test]
    fn resuming_an_unknown_session_is_refused() {
        let a = admission(small(), 0);
        assert_eq!(
            a.offer(
                &ALICE,
                &offer(1, "backup/a", true),
                &ClientLoad::default(),
                &GlobalLoad::default(),
                None,
                &[]
            ),
            Decision::Refuse(Refusal::UnknownSession)
        );
    }

    #[test]
    fn connections_and_requests_are_limited_per_client() {
        let a = admission(small(), 0);
        let mut c = ClientLoad::default();
        for _ in 0..3 {
            a.connection(&c).expect("within the limit");
            c.connections += 1;
        }
        assert_eq!(a.connection(&c), Err(Busy::ClientConnections { limit: 3 }));
        assert_eq!(a.connection(&ClientLoad::default()), Ok(()));
        a.request(&c).expect("first request");
        c.requests = 1;
        assert_eq!(a.request(&c), Err(Busy::ClientRequests { limit: 1 }));
    }

    #[test]
    fn limits_are_validated_against_the_stream_window() {
        // The default link's window: 2 × 6.25 MB of bandwidth-delay product.
        let window: u64 = 12_500_000;
        Limits::default().validate(window).expect("defaults");
        let tiny = Limits {
            memory_budget_bytes: 1 << 20,
            ..Limits::default()
        };
        assert!(tiny.validate(window).unwrap_err().contains("memory budget"));
        let none = Limits {
            memory_budget_bytes: 0,
            ..Limits::default()
        };
        none.validate(window).expect("no budget");
        assert!(Limits::session_memory_for(DEFAULT_HELD_LIMIT) > DEFAULT_HELD_LIMIT);
        assert!(Limits::connection_memory(window) >= 2 * window);
        let d = Limits::default();
        assert_eq!(d.streams_per_connection(), 12);
        assert!(d.connection_charge(window) > Limits::connection_memory(window));
        assert_eq!(d.connection_window(window), 8 * window);
        let one = Limits {
            per_client_sessions: 1,
            ..Limits::default()
        };
        assert_eq!(one.connection_window(window), 2 * window);
        let unlimited = Limits {
            per_client_sessions: 0,
            per_client_requests: 0,
            ..Limits::default()
        };
        assert_eq!(
            unlimited.streams_per_connection(),
            MAX_STREAMS_PER_CONNECTION
        );
    }
}
