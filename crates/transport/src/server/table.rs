//! The server's table: held sessions, sinks being opened, and every
//! client's connections and requests, under one lock; the tickets that
//! count a connection, a request or an opening sink until dropped; and the
//! application of an admission decision to the table.

use super::ServerEvent;
use crate::control::Control;
use crate::identity::AllowedKeys;
use fjord_proto::admission::{
    Admission, Busy, ClientLoad, Decision, GlobalLoad, Holder, Refusal, ServerCounters, SessionView,
};
use fjord_proto::ended::EndedSessions;
use fjord_proto::message::{Offer, Report, SessionId};
use fjord_proto::receiver::ReceiverSession;
use fjord_proto::PublicKey;
use fjord_sink::chunk_cache::ChunkCaches;
use fjord_sink::threaded::ThreadedSink;
use fjord_sink::SinkFactory;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// A session and its sink, locked while a connection runs it.
pub(super) struct Slot {
    pub(super) session: ReceiverSession,
    pub(super) sink: ThreadedSink,
}

/// A slot shared between the table and the task running it.
pub(super) type SharedSlot = Arc<tokio::sync::Mutex<Slot>>;

/// The stream currently carrying a session, and how to stop its task.
#[derive(Clone)]
pub(super) struct Attached {
    /// The stream's connection (shared with other streams).
    pub(super) conn: quinn::Connection,
    /// Told once when a newer stream takes the session over: the task
    /// running the session on this stream lets go of it.
    pub(super) stop: Arc<tokio::sync::Notify>,
}

impl Attached {
    /// True when `self` and `other` are the same stream's attachment.
    pub(super) fn same(&self, other: &Attached) -> bool {
        Arc::ptr_eq(&self.stop, &other.stop)
    }
}

/// A held session.
pub(super) struct Entry {
    pub(super) slot: SharedSlot,
    /// The stream currently carrying the session.
    pub(super) conn: Option<Attached>,
    /// The key that offered it.
    pub(super) key: PublicKey,
    /// Its original offer.
    pub(super) offer: Offer,
}

/// An admitted offer whose sink is being opened.
struct Opening {
    key: PublicKey,
    offer: Offer,
}

#[derive(Default)]
struct ClientUse {
    connections: usize,
    requests: usize,
}

/// Everything admission counts, under one lock.
pub(super) struct State {
    /// The held sessions.
    pub(super) sessions: HashMap<SessionId, Entry>,
    opening: HashMap<u64, Opening>,
    next_opening: u64,
    clients: HashMap<PublicKey, ClientUse>,
    /// Open connections.
    pub(super) connections: usize,
    /// Reports of sessions that ended, for senders that lost them.
    pub(super) ended: EndedSessions,
}

impl State {
    /// An empty table whose ended sessions are remembered for twice the
    /// sender's `grace` (a sender resumes within its grace of the loss,
    /// which may come before the receiver ended the session).
    pub(super) fn new(grace: Duration) -> State {
        State {
            sessions: HashMap::new(),
            opening: HashMap::new(),
            next_opening: 0,
            clients: HashMap::new(),
            connections: 0,
            ended: EndedSessions::new(
                grace.saturating_mul(2),
                fjord_proto::ended::DEFAULT_CAPACITY,
            ),
        }
    }

    fn client_load(&self, key: &PublicKey) -> ClientLoad {
        let mut load = ClientLoad::default();
        for e in self.sessions.values().filter(|e| e.key == *key) {
            if e.conn.is_some() {
                load.sessions_attached += 1;
            } else {
                load.sessions_detached += 1;
            }
        }
        load.sessions_attached += self.opening.values().filter(|o| o.key == *key).count();
        if let Some(u) = self.clients.get(key) {
            load.connections = u.connections;
            load.requests = u.requests;
        }
        load
    }

    fn global_load(&self) -> GlobalLoad {
        GlobalLoad {
            sessions: self.sessions.len() + self.opening.len(),
            connections: self.connections,
        }
    }

    fn decide(&self, admission: &Admission, key: &PublicKey, offer: &Offer) -> Decision {
        fn held<'a>((id, e): (&'a SessionId, &'a Entry)) -> SessionView<'a> {
            SessionView {
                id: *id,
                key: &e.key,
                offer: &e.offer,
                holder: if e.conn.is_some() {
                    Holder::Attached
                } else {
                    Holder::Detached
                },
            }
        }
        fn opening(o: &Opening) -> SessionView<'_> {
            SessionView {
                id: o.offer.session,
                key: &o.key,
                offer: &o.offer,
                holder: Holder::Opening,
            }
        }
        let same_id = self
            .sessions
            .get_key_value(&offer.session)
            .map(held)
            .or_else(|| {
                self.opening
                    .values()
                    .find(|o| o.offer.session == offer.session)
                    .map(opening)
            });
        let same_dataset: Vec<SessionView<'_>> = self
            .sessions
            .iter()
            .map(held)
            .chain(self.opening.values().map(opening))
            .filter(|v| v.key == key && v.offer.dataset == offer.dataset && v.id != offer.session)
            .collect();
        admission.offer(
            key,
            offer,
            &self.client_load(key),
            &self.global_load(),
            same_id,
            &same_dataset,
        )
    }

    fn release_client(&mut self, key: &PublicKey, f: impl FnOnce(&mut ClientUse)) {
        if let Some(u) = self.clients.get_mut(key) {
            f(u);
            if u.connections == 0 && u.requests == 0 {
                self.clients.remove(key);
            }
        }
    }
}

/// What every task of one server shares.
pub(crate) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) factory: Arc<dyn SinkFactory>,
    pub(crate) control: Arc<dyn Control>,
    pub(crate) caches: Option<std::sync::Arc<ChunkCaches>>,
    pub(super) grace: Duration,
    pub(crate) admission: Admission,
    pub(crate) counters: Arc<ServerCounters>,
    pub(super) events: mpsc::UnboundedSender<ServerEvent>,
    /// The pinned keys, shared with the TLS verifier; a key removed by a
    /// reload is refused on every new stream of a connection it still has.
    pub(super) allowed: AllowedKeys,
    /// Refusals by code and key.
    pub(crate) refusals: super::refusals::Refusals,
}

impl Shared {
    /// Remembers how session `id` of `key` ended, for a sender that
    /// resumes without having had the report.
    pub(super) fn record_ended(
        &self,
        id: SessionId,
        key: PublicKey,
        report: &fjord_proto::message::Message,
    ) {
        if let fjord_proto::message::Message::Report(report) = report {
            let now = std::time::Instant::now();
            self.state().ended.record(id, key, report.clone(), now);
        }
    }

    /// The table, locked (never across an await).
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a connection of `key`, if its limit allows.
    pub(super) fn admit_connection(self: &Arc<Self>, key: PublicKey) -> Result<ConnTicket, Busy> {
        let mut st = self.state();
        self.admission.connection(&st.client_load(&key))?;
        st.clients.entry(key).or_default().connections += 1;
        st.connections += 1;
        ServerCounters::bump(&self.counters.connections_accepted);
        Ok(ConnTicket {
            shared: self.clone(),
            key,
        })
    }

    /// Counts a control request of `key`, if its limit allows.
    pub(crate) fn admit_request(&self, key: PublicKey) -> Result<RequestTicket<'_>, Busy> {
        let mut st = self.state();
        self.admission.request(&st.client_load(&key))?;
        st.clients.entry(key).or_default().requests += 1;
        Ok(RequestTicket { shared: self, key })
    }

    /// Counts and logs a `Busy` answer to `what` from `key`.
    pub(crate) fn note_busy(&self, key: &PublicKey, busy: &Busy, what: &str) {
        let counter = if busy.is_limit() {
            &self.counters.refused_limit
        } else {
            &self.counters.refused_busy
        };
        ServerCounters::bump(counter);
        self.refusals.note(
            super::refusals::label(fjord_proto::message::RefuseCode::Busy),
            Some(*key),
        );
        if busy.is_limit() {
            warn!(sender = %key, reason = %busy, "{what} answered busy: at a limit");
        } else {
            info!(sender = %key, reason = %busy, "{what} answered busy");
        }
    }
}

/// One open connection of a client; uncounted when dropped (a short,
/// uncontended lock, never held across an await).
pub(super) struct ConnTicket {
    shared: Arc<Shared>,
    key: PublicKey,
}

impl Drop for ConnTicket {
    fn drop(&mut self) {
        let mut st = self.shared.state();
        st.connections = st.connections.saturating_sub(1);
        st.release_client(&self.key, |u| {
            u.connections = u.connections.saturating_sub(1)
        });
    }
}

/// One control request in progress; uncounted when dropped.
pub(crate) struct RequestTicket<'a> {
    shared: &'a Shared,
    key: PublicKey,
}

impl Drop for RequestTicket<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.state();
        st.release_client(&self.key, |u| u.requests = u.requests.saturating_sub(1));
    }
}

/// An admitted offer counted while its sink is opened.
pub(super) struct OpeningTicket<'a> {
    shared: &'a Shared,
    n: u64,
}

impl Drop for OpeningTicket<'_> {
    fn drop(&mut self) {
        self.shared.state().opening.remove(&self.n);
    }
}

/// What to do with an admitted offer.
pub(super) enum Plan<'a> {
    /// Move the held session to this stream (the old one, if any, to be
    /// stopped).
    Takeover(SharedSlot, Option<Attached>),
    /// Open a new session, after retiring the replaced one, if any.
    Open(OpeningTicket<'a>, Option<(SessionId, SharedSlot)>),
    /// Refuse for now.
    Busy(Busy),
    /// Refuse for good.
    Refuse(Refusal),
    /// The session already ended: send its report again.
    Replay(Report),
}

impl Shared {
    /// Decides `offer` and applies the decision to the table in one
    /// lock. Nothing of a held session is touched unless the key and the
    /// offer are its own.
    pub(super) fn admit_offer(
        &self,
        key: &PublicKey,
        offer: &Offer,
        attached: &Attached,
    ) -> Plan<'_> {
        let mut st = self.state();
        if offer.resuming && !st.sessions.contains_key(&offer.session) {
            let now = std::time::Instant::now();
            if let Some(report) = st.ended.report(&offer.session, key, now) {
                return Plan::Replay(report);
            }
        }
        let decision = st.decide(&self.admission, key, offer);
        let (n, replaced) = match decision {
            Decision::Takeover => {
                return match st.sessions.get_mut(&offer.session) {
                    Some(entry) => {
                        let old = entry.conn.replace(attached.clone());
                        Plan::Takeover(entry.slot.clone(), old)
                    }
                    None => Plan::Refuse(Refusal::UnknownSession),
                }
            }
            Decision::Busy(b) => return Plan::Busy(b),
            Decision::Refuse(r) => return Plan::Refuse(r),
            Decision::Accept => (st.next_opening, None),
            Decision::Replace(old) => (
                st.next_opening,
                st.sessions.remove(&old).map(|e| (old, e.slot)),
            ),
        };
        st.next_opening += 1;
        st.opening.insert(
            n,
            Opening {
                key: *key,
                offer: offer.clone(),
            },
        );
        drop(st);
        Plan::Open(OpeningTicket { shared: self, n }, replaced)
    }
}
