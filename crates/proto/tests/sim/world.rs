//! A deterministic simulation of the session protocol: both session
//! machines (`SenderSession`, the receiver's `Handshake` and
//! `ReceiverSession`, and the pure `Admission`) driven the way the quinn
//! drivers drive them (`client.rs`, `server.rs`, `server/*`), over virtual
//! connections in virtual time. Nothing here sleeps, opens a socket or reads
//! the wall clock (one `Instant` is taken as the origin of virtual time,
//! since the machines take `Instant`s); every random choice comes from one
//! seeded generator, so a seed and a fault plan replay exactly.
//!
//! # What the virtual link models, and what each fault stands for
//!
//! A QUIC stream is reliable and ordered within its connection, so the
//! machines never see a lost, reordered or duplicated byte *within* a
//! connection. What they see is connections: one carries a prefix of what
//! was written, then ends, and a new one starts. The link is modelled at
//! that level:
//!
//! - **Delay**: each direction of a connection has a latency, a random
//!   jitter and a bandwidth (bytes are serialised, then travel). Bytes are
//!   cut into chunks at random boundaries, so messages arrive in pieces as
//!   `read_chunk` hands them out, and the real wire encoding
//!   (`Message::encode`, `MessageReader`) is exercised; order within a
//!   direction is kept (QUIC reassembles the stream).
//! - **Flow control**: a writer stops while more than the stream window
//!   is in flight (`write_all` waiting for credit).
//! - **Blackhole** (a flap): a window of time in which no packet passes,
//!   either way, on any connection. Bytes in flight wait (QUIC retransmits
//!   them) and arrive after the window if their connection is still alive.
//!   An end that hears nothing for the idle timeout (counted from its last
//!   keep-alive, a random phase before the window) drops the connection;
//!   then everything in flight on it is lost (**drop**). Connection
//!   attempts during a blackhole time out.
//! - **Reset**: at an instant the path of every open connection breaks
//!   (NAT rebinding without migration, a stateless reset, an interface
//!   bouncing). In-flight bytes are lost. Each end learns it after its own
//!   delay: at once (an error) or only at its idle timeout. An end that
//!   learns late still holds the connection when its peer is already on a
//!   new one: the receiver then sees a second connection offering an
//!   attached session (a **takeover**).
//! - **Reorder**: connections are independent, so an old connection's last
//!   bytes or its close can reach the receiver after a newer connection's
//!   hello and offer, and the receiver's view of which connection carries
//!   a session changes in whatever order the jitter gives.
//! - **Duplicate**: QUIC never duplicates within a stream; across
//!   connections, the replay window is sent again after every resumption
//!   (each frame the old connection may have carried), and an offer comes
//!   again for a session the receiver still holds (a takeover). The
//!   simulation counts every byte re-sent on each connection itself.
//! - **Lost close**: a `CONNECTION_CLOSE` is lost with some probability;
//!   the peer then learns of the end only at its idle timeout.
//! - **Damage**: a whole message is replaced by a frame the codec must
//!   reject (an unknown type, an impossible length, a truncated body).
//!   QUIC's AEAD stops corruption on the wire; this stands for a peer that
//!   speaks wrongly (a bug, a foreign program).
//!
//! The receiver's sink is in memory and checks that deliveries are
//! contiguous; a completed session's bytes are kept as "stored", an ended
//! one's are discarded (no file is left).

use bytes::{Bytes, BytesMut};
use fjord_proto::admission::{
    Admission, ClientLoad, Decision, GlobalLoad, Holder, Limits, SessionView,
};
use fjord_proto::ended::EndedSessions;
use fjord_proto::message::{
    offer_flags, DataFrame, DecodeError, Message, MessageReader, Offer, RefuseCode, Report,
    SessionId, Snapshot,
};
use fjord_proto::receiver::{refuse, Action, Handshake, ReceiverSession, ReceiverStats};
use fjord_proto::sender::{SenderSession, SenderStats};
use fjord_proto::{close_code, Backoff, BackoffConfig, PublicKey, SessionError};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Virtual time since the start of the simulation.
pub type Time = Duration;

const UP: usize = 0; // sender → receiver
const DOWN: usize = 1; // receiver → sender
const SENDER_END: usize = 0;
const RECEIVER_END: usize = 1;

/// How long the real drivers wait for a written refusal or report to
/// arrive before they close (`send.stopped()` under a 2 s timeout).
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// How long the receiver waits for the sender to close after the report.
const GOODBYE_WAIT: Duration = Duration::from_secs(5);
/// How long a giving-up sender waits for its `Abort` to arrive.
const ABORT_WAIT: Duration = Duration::from_secs(2);

/// The network.
#[derive(Clone, Debug)]
pub struct Net {
    /// One-way latency.
    pub latency: Duration,
    /// Random extra delay per chunk, up to this (order is kept).
    pub jitter: Duration,
    /// Bytes per second, each direction of each connection.
    pub bandwidth: u64,
    /// Largest chunk the reader is handed at once.
    pub chunk: usize,
    /// Bytes a writer may have in flight (the QUIC stream window).
    pub stream_window: u64,
    /// The QUIC idle timeout (also the client's handshake timeout).
    pub idle_timeout: Duration,
    /// The keep-alive interval: an end's last packet before a blackhole is
    /// up to this long before it.
    pub keep_alive: Duration,
    /// Probability that a connection close is lost.
    pub close_loss: f64,
}

impl Default for Net {
    fn default() -> Net {
        Net {
            latency: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            bandwidth: 2 << 20,
            chunk: 4096,
            stream_window: 128 << 10,
            idle_timeout: Duration::from_millis(1500),
            keep_alive: Duration::from_millis(300),
            close_loss: 0.0,
        }
    }
}

/// A reset of every open connection's path at `at`; each end learns of
/// it after its delay.
#[derive(Clone, Debug)]
pub struct Reset {
    /// When the path breaks.
    pub at: Time,
    /// When the sender's end learns of it, after `at`.
    pub sender_after: Duration,
    /// When the receiver's end learns of it, after `at`.
    pub receiver_after: Duration,
}

/// How a message is damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DamageKind {
    /// A frame of an unknown message type.
    UnknownType,
    /// A length prefix beyond the limit.
    TooLong,
    /// A data frame whose body ends inside its header.
    Truncated,
}

/// Replaces one message with a damaged frame.
#[derive(Clone, Debug)]
pub struct Damage {
    /// True for a message from the sender, false for one from the receiver.
    pub from_sender: bool,
    /// The connection (counted from 0 in the order they were opened).
    pub conn: usize,
    /// The message on that connection and direction (from 0).
    pub message: usize,
    /// What is written instead.
    pub kind: DamageKind,
}

/// Everything that goes wrong, planned ahead.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Blackholes `[start, end)`.
    pub blackholes: Vec<(Time, Time)>,
    /// Resets.
    pub resets: Vec<Reset>,
    /// Damaged messages.
    pub damage: Vec<Damage>,
}

/// One transfer to simulate.
#[derive(Clone, Debug)]
pub struct Transfer {
    /// The sender's key.
    pub key: [u8; 32],
    /// What is offered.
    pub offer: Offer,
    /// The stream.
    pub data: Bytes,
    /// When the sender starts.
    pub start: Time,
    /// The source fails after this many bytes (the sender aborts).
    pub source_fails_at: Option<u64>,
}

impl Transfer {
    /// A transfer of `data` into `dataset` as `key`, session `id`.
    pub fn new(key: u8, id: u128, dataset: &str, data: Bytes) -> Transfer {
        Transfer {
            key: [key; 32],
            offer: Offer {
                session: SessionId(id),
                resuming: false,
                dataset: dataset.into(),
                from: None,
                to: Snapshot {
                    name: "tank/fs@snap".into(),
                    guid: 7,
                },
                flags: 0,
                size_estimate: Some(data.len() as u64),
            },
            data,
            start: Duration::ZERO,
            source_fails_at: None,
        }
    }
}

/// The simulation's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The network.
    pub net: Net,
    /// The grace period of both ends.
    pub grace: Duration,
    /// The sender's replay window.
    pub window: u64,
    /// Payload bytes per data frame.
    pub frame: usize,
    /// The sender's reconnection backoff.
    pub backoff: BackoffConfig,
    /// The receiver's limits.
    pub limits: Limits,
    /// The receiver's global session cap (0: none).
    pub max_sessions: usize,
    /// The seed of every random choice.
    pub seed: u64,
    /// Virtual time after which the simulation stops unsettled.
    pub horizon: Time,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            net: Net::default(),
            grace: Duration::from_secs(10),
            window: 128 << 10,
            frame: 16 << 10,
            backoff: BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
            limits: Limits::default(),
            max_sessions: 0,
            seed: 1,
            horizon: Duration::from_secs(3600),
        }
    }
}

/// Why a simulated sender failed: the client's `SendError`, as far as it
/// reaches the machines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendFailure {
    /// The session failed.
    Session(SessionError),
    /// The source failed after `at` bytes (the session was aborted).
    Source {
        /// Bytes produced before.
        at: u64,
    },
}

/// Why a receiver's session ended without completing.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvFailure {
    /// The session failed (grace, protocol, the sender aborted).
    Session(SessionError),
    /// A message from the sender could not be decoded.
    Undecodable(DecodeError),
    /// A new session of the same key into the dataset replaced it.
    Replaced,
    /// The machine asked for a delivery that does not continue the sink.
    Sink(String),
}

/// What the receiver reports, like `ServerEvent`.
#[derive(Debug)]
pub enum Event {
    /// A session completed.
    Completed {
        /// The session.
        session: SessionId,
        /// Its counters.
        stats: ReceiverStats,
    },
    /// A session ended without completing; its sink was discarded.
    Failed {
        /// The session.
        session: SessionId,
        /// Why.
        error: RecvFailure,
        /// When.
        at: Time,
    },
    /// A connection or offer was refused.
    Refused {
        /// The code sent (or the close code `BUSY` for a connection).
        code: RefuseCode,
        /// The reason.
        reason: String,
    },
}

/// What one sender saw, besides its outcome.
#[derive(Clone, Debug, Default)]
pub struct Wire {
    /// Payload bytes re-sent on each connection that carried data frames
    /// (bytes below the highest offset any earlier connection carried),
    /// counted by the simulation itself.
    pub resent_per_connection: Vec<u64>,
    /// Connections attempted.
    pub attempts: u64,
    /// `Busy` answers (refusals or busy closes).
    pub busy: u64,
    /// Highest offset written to any connection.
    pub high_water: u64,
}

/// A sender's result.
#[derive(Clone, Debug)]
pub struct SenderResult {
    /// The receiver's report, or why it failed.
    pub outcome: Result<Report, SendFailure>,
    /// When it finished.
    pub at: Time,
    /// The machine's counters.
    pub stats: SenderStats,
    /// The simulation's own counts.
    pub wire: Wire,
}

/// The end of a simulation.
#[derive(Debug)]
pub struct Outcome {
    /// Each transfer's sender, in order.
    pub senders: Vec<SenderResult>,
    /// The receiver's events.
    pub events: Vec<Event>,
    /// Completed streams by dataset.
    pub stored: BTreeMap<String, Bytes>,
    /// Sessions still held by the receiver at the end.
    pub held: usize,
    /// Connections still open at the receiver at the end.
    pub connections: usize,
    /// Offers that took over an attached session.
    pub takeovers: u64,
    /// Resumed offers of ended sessions answered with their report again.
    pub replays: u64,
    /// Virtual time at the end.
    pub elapsed: Time,
    /// False when the horizon was reached first.
    pub settled: bool,
}

impl Outcome {
    /// The receiver's final event for `session`, if any.
    pub fn end_of(&self, session: SessionId) -> Option<&Event> {
        self.events.iter().rev().find(|e| match e {
            Event::Completed { session: s, .. } | Event::Failed { session: s, .. } => *s == session,
            Event::Refused { .. } => false,
        })
    }
}

// ---------------------------------------------------------------------------
// Connections.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Closed {
    /// The idle timeout fired (blackhole, or a silent peer).
    Idle,
    /// The path broke and this end got an error.
    Reset,
    /// The peer closed with a code and a reason.
    App(u32, String),
}

#[derive(Default)]
struct Pipe {
    queue: VecDeque<(Time, Bytes)>,
    free_at: Time,
    last_arrival: Time,
    in_flight: u64,
    reader: MessageReader,
    /// Nothing arriving at or after this is delivered.
    cut: Option<Time>,
    /// Messages written so far (for damage).
    written: usize,
}

struct Conn {
    sender: usize,
    /// When the receiver's end comes up (None: the handshake never
    /// reached it).
    rx_open_at: Option<Time>,
    rx_opened: bool,
    /// Whether each end is still open.
    open: [bool; 2],
    /// When each end learns that the connection ended, and how.
    notice: [Option<(Time, Closed)>; 2],
    /// Each end's keep-alive phase.
    skew: [Duration; 2],
    pipes: [Pipe; 2],
}

impl Conn {
    fn set_notice(&mut self, end: usize, at: Time, how: Closed) {
        if self.notice[end].as_ref().is_none_or(|(t, _)| at < *t) {
            self.notice[end] = Some((at, how));
        }
    }

    fn cut(&mut self, dir: usize, at: Time) {
        let p = &mut self.pipes[dir];
        if p.cut.is_none_or(|c| at < c) {
            p.cut = Some(at);
        }
    }
}

// ---------------------------------------------------------------------------
// The sender's driver (client.rs).

enum TxState {
    /// Before the start, or sleeping a backoff; at `until`, the loop top.
    Waiting {
        until: Time,
    },
    /// A handshake; it ends at `at`.
    Connecting {
        conn: usize,
        at: Time,
        attempt: Attempt,
    },
    /// `run_connection`.
    Running {
        conn: usize,
    },
    /// Waiting for the `Abort` to arrive.
    Aborting {
        conn: usize,
        until: Time,
    },
    Finished,
}

struct Tx {
    spec: Transfer,
    session: SenderSession,
    backoff: Backoff,
    source_done: bool,
    state: TxState,
    result: Option<(Result<Report, SendFailure>, Time)>,
    wire: Wire,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Connected.
    Ok,
    /// The handshake timed out: back off and retry.
    Retry,
    /// The grace period ended first: the loop top decides.
    Deadline,
}

enum ConnEnd {
    Done,
    Lost,
    Busy(String),
}

// ---------------------------------------------------------------------------
// The receiver's driver (server.rs, server/session.rs, server/table.rs).

struct Held {
    session: ReceiverSession,
    conn: Option<usize>,
    key: PublicKey,
    offer: Offer,
    sink: BytesMut,
}

enum Stage {
    Hello,
    Offer {
        version: u16,
    },
    Running(SessionId),
    /// Waiting to close (after a refusal, a report or the goodbye).
    Closing {
        at: Time,
        code: u32,
        reason: String,
    },
}

struct RxConn {
    key: PublicKey,
    stage: Stage,
}

enum RunEnd {
    Failed(RecvFailure, i32),
    Aborted(String),
}

/// The simulated world: senders, one receiver, their connections.
pub struct World {
    cfg: Config,
    faults: Faults,
    base: Instant,
    now: Time,
    rng: fastrand::Rng,
    conns: Vec<Conn>,
    txs: Vec<Tx>,
    admission: Admission,
    held: BTreeMap<SessionId, Held>,
    rx_conns: BTreeMap<usize, RxConn>,
    events: Vec<Event>,
    stored: BTreeMap<String, Bytes>,
    takeovers: u64,
    /// Reports of ended sessions, replayed to senders that lost them.
    ended: EndedSessions,
    replays: u64,
}

impl World {
    /// A world running `transfers` under `cfg` and `faults`.
    pub fn new(cfg: Config, faults: Faults, transfers: Vec<Transfer>) -> World {
        let base = Instant::now();
        let mut faults = faults;
        faults.blackholes.sort_by_key(|b| b.0);
        faults.resets.sort_by_key(|r| r.at);
        let txs = transfers
            .into_iter()
            .map(|spec| Tx {
                session: SenderSession::new(
                    spec.offer.clone(),
                    spec.key,
                    cfg.window,
                    cfg.grace,
                    base + spec.start,
                ),
                backoff: Backoff::new(cfg.backoff),
                source_done: false,
                state: TxState::Waiting { until: spec.start },
                result: None,
                wire: Wire::default(),
                spec,
            })
            .collect();
        World {
            admission: Admission::new(cfg.limits.clone(), cfg.max_sessions, 0),
            ended: EndedSessions::new(cfg.grace * 2, fjord_proto::ended::DEFAULT_CAPACITY),
            replays: 0,
            rng: fastrand::Rng::with_seed(cfg.seed),
            cfg,
            faults,
            base,
            now: Duration::ZERO,
            conns: Vec::new(),
            txs,
            held: BTreeMap::new(),
            rx_conns: BTreeMap::new(),
            events: Vec::new(),
            stored: BTreeMap::new(),
            takeovers: 0,
        }
    }

    /// Runs until every sender finished and the receiver holds nothing,
    /// or until the horizon.
    pub fn run(mut self) -> Outcome {
        let settled = loop {
            self.pump();
            if self.settled() {
                break true;
            }
            match self.next_time() {
                Some(t) if t <= self.cfg.horizon => {
                    debug_assert!(t >= self.now, "time runs forward");
                    self.now = t.max(self.now);
                    self.deliver();
                }
                _ => break false,
            }
        };
        let now = self.now;
        Outcome {
            senders: self
                .txs
                .iter()
                .map(|t| {
                    let (outcome, at) = t.result.clone().unwrap_or((
                        Err(SendFailure::Session(SessionError::Internal(
                            "the simulation stopped first".into(),
                        ))),
                        now,
                    ));
                    SenderResult {
                        outcome,
                        at,
                        stats: t.session.stats(),
                        wire: t.wire.clone(),
                    }
                })
                .collect(),
            events: self.events,
            stored: self.stored,
            held: self.held.len(),
            connections: self.rx_conns.len(),
            takeovers: self.takeovers,
            replays: self.replays,
            elapsed: now,
            settled,
        }
    }

    fn at(&self, t: Time) -> Instant {
        self.base + t
    }

    fn settled(&self) -> bool {
        self.txs
            .iter()
            .all(|t| matches!(t.state, TxState::Finished))
            && self.held.is_empty()
            && self.rx_conns.is_empty()
    }

    fn in_blackhole(&self, t: Time) -> Option<Time> {
        self.faults
            .blackholes
            .iter()
            .find(|(s, e)| *s <= t && t < *e)
            .map(|b| b.1)
    }

    /// The earliest pending event.
    fn next_time(&self) -> Option<Time> {
        let now = self.now;
        let mut next: Option<Time> = None;
        let mut at = |t: Time| {
            if t > now {
                next = Some(next.map_or(t, |n: Time| n.min(t)));
            }
        };
        for c in &self.conns {
            for (dir, p) in c.pipes.iter().enumerate() {
                let dest = if dir == UP { RECEIVER_END } else { SENDER_END };
                if c.open[dest] {
                    if let Some((t, _)) = p.queue.front() {
                        at(*t);
                    }
                }
            }
            for end in [SENDER_END, RECEIVER_END] {
                if c.open[end] {
                    if let Some((t, _)) = &c.notice[end] {
                        at(*t);
                    }
                }
            }
            if let (false, Some(t)) = (c.rx_opened, c.rx_open_at) {
                at(t);
            }
        }
        for tx in &self.txs {
            match tx.state {
                TxState::Waiting { until } => at(until),
                TxState::Connecting { at: t, .. } => at(t),
                TxState::Aborting { until, .. } => at(until),
                TxState::Running { .. } | TxState::Finished => {}
            }
        }
        for rc in self.rx_conns.values() {
            if let Stage::Closing { at: t, .. } = rc.stage {
                at(t);
            }
        }
        for h in self.held.values().filter(|h| h.conn.is_none()) {
            if let Some(t) = h.session.poll_timeout() {
                at(t.saturating_duration_since(self.base));
            }
        }
        next
    }

    /// Moves every chunk due by now into its reader (or drops it).
    fn deliver(&mut self) {
        let now = self.now;
        for c in &mut self.conns {
            for (dir, p) in c.pipes.iter_mut().enumerate() {
                let dest = if dir == UP { RECEIVER_END } else { SENDER_END };
                while let Some((t, _)) = p.queue.front() {
                    if *t > now {
                        break;
                    }
                    let (t, bytes) = p.queue.pop_front().expect("front");
                    p.in_flight -= bytes.len() as u64;
                    let lost = p.cut.is_some_and(|cut| t >= cut) || !c.open[dest];
                    if !lost {
                        p.reader.feed(&bytes);
                    }
                }
            }
        }
    }

    fn pump(&mut self) {
        for _ in 0..1_000_000 {
            let mut progress = false;
            for i in 0..self.txs.len() {
                progress |= self.pump_sender(i);
            }
            progress |= self.pump_receiver();
            if !progress {
                return;
            }
        }
        panic!("the simulation makes progress forever at {:?}", self.now);
    }

    // -- the link ---------------------------------------------------------

    /// Opens a connection from sender `tx` now; returns it, when the
    /// client's handshake ends and whether it succeeds. The client is
    /// connected after one round trip; the receiver accepts it half a
    /// round trip later (the client's Finished). A blackhole or a reset
    /// during the handshake makes it time out.
    fn connect(&mut self, tx: usize) -> (usize, Time, bool) {
        let now = self.now;
        let lat = self.cfg.net.latency;
        let ok = (0..=3).all(|k| self.in_blackhole(now + k * lat).is_none())
            && !self.resets_between(now, now + 3 * lat);
        let ka = self.cfg.net.keep_alive.as_nanos() as u64;
        let skew = [
            Duration::from_nanos(self.rng.u64(0..ka.max(1))),
            Duration::from_nanos(self.rng.u64(0..ka.max(1))),
        ];
        let id = self.conns.len();
        let mut conn = Conn {
            sender: tx,
            rx_open_at: ok.then_some(now + 3 * lat),
            rx_opened: false,
            open: [ok, ok],
            notice: [None, None],
            skew,
            pipes: [Pipe::default(), Pipe::default()],
        };
        for p in &mut conn.pipes {
            p.free_at = now;
            p.last_arrival = now;
        }
        self.conns.push(conn);
        if ok {
            self.plan_deaths(id, SENDER_END, now + 2 * lat);
            self.plan_deaths(id, RECEIVER_END, now + 3 * lat);
            (id, now + 2 * lat, true)
        } else {
            (id, now + self.cfg.net.idle_timeout, false)
        }
    }

    fn resets_between(&self, from: Time, to: Time) -> bool {
        self.faults.resets.iter().any(|r| from <= r.at && r.at < to)
    }

    /// The planned deaths of `end` of `conn`, up from `from`: the first
    /// blackhole either end cannot outlive (an end whose peer timed out
    /// hears nothing more from it, so its own idle timer runs out too),
    /// the first reset.
    fn plan_deaths(&mut self, conn: usize, end: usize, from: Time) {
        let idle = self.cfg.net.idle_timeout;
        let skews = self.conns[conn].skew;
        let mut plans = Vec::new();
        for &(s, e) in &self.faults.blackholes {
            if e <= from {
                continue;
            }
            let start = s.max(from);
            let death_of = |skew: Duration| start.saturating_sub(skew).max(from) + idle;
            if skews.iter().any(|&skew| death_of(skew) < e) {
                plans.push((death_of(skews[end]), Closed::Idle, start));
                break;
            }
        }
        if let Some(r) = self.faults.resets.iter().find(|r| r.at >= from) {
            let after = if end == SENDER_END {
                r.sender_after
            } else {
                r.receiver_after
            };
            let how = if after >= idle {
                Closed::Idle
            } else {
                Closed::Reset
            };
            plans.push((r.at + after, how, r.at));
        }
        let c = &mut self.conns[conn];
        for (at, how, broken) in plans {
            c.set_notice(end, at, how);
            c.cut(UP, broken);
            c.cut(DOWN, broken);
        }
    }

    /// Writes `msg` on `dir` of `conn` (damaged if the plan says so).
    fn write(&mut self, conn: usize, dir: usize, msg: &Message) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        let n = self.conns[conn].pipes[dir].written;
        self.conns[conn].pipes[dir].written += 1;
        let damage = self
            .faults
            .damage
            .iter()
            .find(|d| d.conn == conn && d.message == n && d.from_sender == (dir == UP))
            .map(|d| d.kind);
        let bytes = match damage {
            None => buf.freeze(),
            Some(DamageKind::UnknownType) => Bytes::from_static(&[0, 0, 0, 5, 0xee, 1, 2, 3, 4]),
            Some(DamageKind::TooLong) => Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 7]),
            Some(DamageKind::Truncated) => Bytes::from_static(&[0, 0, 0, 3, 7, 0, 0]),
        };
        self.send_bytes(conn, dir, bytes);
    }

    fn send_bytes(&mut self, conn: usize, dir: usize, mut bytes: Bytes) {
        let net = self.cfg.net.clone();
        let now = self.now;
        while !bytes.is_empty() {
            let n = self.rng.usize(1..=net.chunk.min(bytes.len()));
            let chunk = bytes.split_to(n);
            let jitter = Duration::from_nanos(self.rng.u64(0..=net.jitter.as_nanos() as u64));
            let p = &self.conns[conn].pipes[dir];
            let depart = now.max(p.free_at);
            let wire = Duration::from_secs_f64(chunk.len() as f64 / net.bandwidth as f64);
            let free_at = depart + wire;
            let mut arrive = free_at + net.latency + jitter;
            // Held back by a blackhole: retransmitted after it.
            if let Some(end) = self.in_blackhole(depart) {
                arrive = arrive.max(end + net.latency);
            }
            while let Some(end) = self.in_blackhole(arrive) {
                arrive = end + net.latency;
            }
            let p = &mut self.conns[conn].pipes[dir];
            arrive = arrive.max(p.last_arrival);
            p.free_at = free_at;
            p.last_arrival = arrive;
            p.in_flight += chunk.len() as u64;
            p.queue.push_back((arrive, chunk));
        }
    }

    fn credit(&self, conn: usize, dir: usize) -> bool {
        self.conns[conn].pipes[dir].in_flight < self.cfg.net.stream_window
    }

    /// `end` closes `conn` now with `code`: it stops reading and writing;
    /// the peer learns of it one latency later (or at its idle timeout if
    /// the close is lost); bytes overtaken by the close are dropped.
    fn close(&mut self, conn: usize, end: usize, code: u32, reason: &str) {
        let now = self.now;
        let lat = self.cfg.net.latency;
        let idle = self.cfg.net.idle_timeout;
        let lost = self.rng.f64() < self.cfg.net.close_loss
            || self.in_blackhole(now).is_some()
            || self.in_blackhole(now + lat).is_some();
        let c = &mut self.conns[conn];
        if !c.open[end] {
            return;
        }
        c.open[end] = false;
        let peer = 1 - end;
        let (out, inbound) = if end == SENDER_END {
            (UP, DOWN)
        } else {
            (DOWN, UP)
        };
        let broken = c.pipes[out].cut.is_some_and(|cut| cut <= now + lat);
        c.cut(inbound, now);
        if lost || broken {
            c.set_notice(peer, now + idle, Closed::Idle);
        } else {
            c.cut(out, now + lat);
            c.set_notice(peer, now + lat, Closed::App(code, reason.to_string()));
        }
    }

    /// When bytes written on `dir` of `conn` so far will have arrived (and
    /// been acknowledged), capped by [`FLUSH_WAIT`].
    fn flushed_at(&self, conn: usize, dir: usize) -> Time {
        let p = &self.conns[conn].pipes[dir];
        (p.last_arrival + self.cfg.net.latency)
            .min(self.now + FLUSH_WAIT)
            .max(self.now)
    }

    /// The notice `end` of `conn` has, if it is due.
    fn due_notice(&self, conn: usize, end: usize) -> Option<Closed> {
        let c = &self.conns[conn];
        match &c.notice[end] {
            Some((t, how)) if c.open[end] && *t <= self.now => Some(how.clone()),
            _ => None,
        }
    }

    // -- the sender -------------------------------------------------------

    /// Prints what happens when `FJORD_SIM_TRACE` is set.
    fn trace(&self, what: impl FnOnce() -> String) {
        if std::env::var_os("FJORD_SIM_TRACE").is_some() {
            eprintln!("{:>10.3}s {}", self.now.as_secs_f64(), what());
        }
    }

    fn finish_tx(&mut self, i: usize, outcome: Result<Report, SendFailure>) {
        let tx = &mut self.txs[i];
        tx.result = Some((outcome, self.now));
        tx.state = TxState::Finished;
    }

    fn pump_sender(&mut self, i: usize) -> bool {
        let now = self.now;
        match self.txs[i].state {
            TxState::Finished => false,
            TxState::Waiting { until } => {
                if until > now {
                    return false;
                }
                // The top of the client's loop.
                let at = self.at(now);
                if let Err(e) = self.txs[i].session.handle_timeout(at) {
                    self.finish_tx(i, Err(SendFailure::Session(e)));
                    return true;
                }
                let grace_end = self.txs[i]
                    .session
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(self.base))
                    .unwrap_or(now + self.cfg.grace);
                let (conn, done, ok) = self.connect(i);
                self.txs[i].wire.attempts += 1;
                self.trace(|| {
                    format!("sender {i}: connection {conn} attempted (ok {ok}, until {done:?})")
                });
                let state = if grace_end < done {
                    // `timeout_at(deadline, connect)`: the attempt is
                    // dropped and the loop top decides.
                    let c = &mut self.conns[conn];
                    c.open = [false, false];
                    c.rx_open_at = None;
                    TxState::Connecting {
                        conn,
                        at: grace_end,
                        attempt: Attempt::Deadline,
                    }
                } else {
                    let attempt = if ok { Attempt::Ok } else { Attempt::Retry };
                    TxState::Connecting {
                        conn,
                        at: done,
                        attempt,
                    }
                };
                self.txs[i].state = state;
                true
            }
            TxState::Connecting { conn, at, attempt } => {
                if at > now {
                    return false;
                }
                match attempt {
                    Attempt::Deadline => {
                        self.txs[i].state = TxState::Waiting { until: now };
                        return true;
                    }
                    Attempt::Retry => {
                        let delay = self.txs[i].backoff.next_delay(self.rng.f64());
                        let grace_end = self.txs[i]
                            .session
                            .poll_timeout()
                            .map(|t| t.saturating_duration_since(self.base));
                        let wake = grace_end.map_or(now + delay, |g| (now + delay).min(g.max(now)));
                        self.txs[i].state = TxState::Waiting { until: wake };
                        return true;
                    }
                    Attempt::Ok => {}
                }
                self.txs[i].state = TxState::Running { conn };
                let at = self.at(now);
                if let Err(e) = self.txs[i].session.connected(at) {
                    self.close(conn, SENDER_END, close_code::ABORTED, &e.to_string());
                    self.finish_tx(i, Err(SendFailure::Session(e)));
                    return true;
                }
                self.txs[i].wire.resent_per_connection.push(0);
                self.run_connection(i, conn);
                true
            }
            TxState::Running { conn } => self.run_connection(i, conn),
            TxState::Aborting { conn, until } => {
                let closed = self.due_notice(conn, SENDER_END).is_some();
                if until > now && !closed {
                    return false;
                }
                let at = self.txs[i].session.produced();
                let reason = format!("the sender could not read the stream after {at} bytes");
                self.close(conn, SENDER_END, close_code::ABORTED, &reason);
                self.finish_tx(i, Err(SendFailure::Source { at }));
                true
            }
        }
    }

    /// One pass of `run_connection`; returns whether anything happened.
    fn run_connection(&mut self, i: usize, conn: usize) -> bool {
        let mut progress = false;
        loop {
            let at = self.at(self.now);
            if self.txs[i].session.is_done() {
                return self.conn_end(i, conn, Ok(ConnEnd::Done));
            }
            // Everything the receiver said so far.
            loop {
                let next = self.conns[conn].pipes[DOWN].reader.next_message();
                match next {
                    Ok(Some(m)) => {
                        progress = true;
                        if let Err(e) = self.txs[i].session.handle(m, at) {
                            let end = match e {
                                SessionError::Refused {
                                    code: RefuseCode::Busy,
                                    reason,
                                } => Ok(ConnEnd::Busy(reason)),
                                e => Err(SendFailure::Session(e)),
                            };
                            return self.conn_end(i, conn, end);
                        }
                        if self.txs[i].session.is_done() {
                            return self.conn_end(i, conn, Ok(ConnEnd::Done));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let e = SessionError::Protocol(format!(
                            "undecodable message from the receiver: {e}"
                        ));
                        return self.conn_end(i, conn, Err(SendFailure::Session(e)));
                    }
                }
            }
            // The connection ended (after what it carried was read).
            if let Some(how) = self.due_notice(conn, SENDER_END) {
                let end = match how {
                    Closed::App(code, reason) if code == close_code::BUSY => {
                        Ok(ConnEnd::Busy(reason))
                    }
                    Closed::App(code, reason)
                        if code == close_code::REFUSED
                            || code == close_code::FAILED
                            || code == close_code::PROTOCOL =>
                    {
                        Err(SendFailure::Session(SessionError::PeerAborted(reason)))
                    }
                    _ => Ok(ConnEnd::Lost),
                };
                self.conns[conn].open[SENDER_END] = false;
                return self.conn_end(i, conn, end);
            }
            if self.txs[i].session.wants_transmit() {
                if !self.credit(conn, UP) {
                    return progress;
                }
                if let Some(msg) = self.txs[i].session.poll_transmit() {
                    if let Message::Data(f) = &msg {
                        let w = &mut self.txs[i].wire;
                        let resent = w.high_water.min(f.end).saturating_sub(f.start);
                        if let Some(r) = w.resent_per_connection.last_mut() {
                            *r += resent;
                        }
                        w.high_water = w.high_water.max(f.end);
                    }
                    self.write(conn, UP, &msg);
                    progress = true;
                    continue;
                }
            }
            // The source (in memory, always ready).
            let tx = &mut self.txs[i];
            if !tx.source_done && tx.session.can_push(self.cfg.frame) {
                let at = tx.session.produced();
                if tx.spec.source_fails_at.is_some_and(|f| at >= f) {
                    let reason = format!("the sender could not read the stream after {at} bytes");
                    self.write(conn, UP, &Message::Abort { reason });
                    let until = self.now + ABORT_WAIT;
                    self.txs[i].state = TxState::Aborting { conn, until };
                    return true;
                }
                let len = tx.spec.data.len() as u64;
                if at >= len {
                    tx.source_done = true;
                    tx.session.finish_input(Bytes::new());
                } else {
                    let end = (at + self.cfg.frame as u64).min(len);
                    let payload = tx.spec.data.slice(at as usize..end as usize);
                    if let Err(e) = tx.session.push(DataFrame::raw(at, payload)) {
                        return self.conn_end(i, conn, Err(SendFailure::Session(e)));
                    }
                }
                progress = true;
                continue;
            }
            return progress;
        }
    }

    /// The end of one connection in the client's loop.
    fn conn_end(&mut self, i: usize, conn: usize, end: Result<ConnEnd, SendFailure>) -> bool {
        let now = self.now;
        self.trace(|| {
            let how = match &end {
                Ok(ConnEnd::Done) => "done".to_string(),
                Ok(ConnEnd::Lost) => "lost".to_string(),
                Ok(ConnEnd::Busy(why)) => format!("busy: {why}"),
                Err(e) => format!("failed: {e:?}"),
            };
            format!(
                "sender {i}: connection {conn} ends: {how}; acked {}",
                self.txs[i].session.stats().acked
            )
        });
        let at = self.at(now);
        match end {
            Ok(ConnEnd::Done) => {
                self.close(conn, SENDER_END, close_code::DONE, "done");
                let report = match self.txs[i].session.phase() {
                    fjord_proto::sender::SenderPhase::Done(r) => Ok(r.clone()),
                    p => Err(SendFailure::Session(SessionError::Internal(format!(
                        "finished in phase {p:?}"
                    )))),
                };
                self.finish_tx(i, report);
                return true;
            }
            Ok(ConnEnd::Lost) => {
                self.txs[i].session.disconnected(at);
                let delay = self.txs[i].backoff.next_delay(self.rng.f64());
                self.close(conn, SENDER_END, close_code::FAILED, "lost");
                self.txs[i].state = TxState::Waiting { until: now + delay };
            }
            Ok(ConnEnd::Busy(why)) => {
                self.txs[i].wire.busy += 1;
                self.txs[i].session.receiver_busy(why, at);
                self.close(
                    conn,
                    SENDER_END,
                    close_code::DONE,
                    "busy; asking again later",
                );
                let delay = self.txs[i].backoff.next_delay(self.rng.f64());
                let wake = self.txs[i]
                    .session
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(self.base))
                    .map_or(now + delay, |d| (now + delay).min(d.max(now)));
                self.txs[i].state = TxState::Waiting { until: wake };
            }
            Err(e) => {
                let reason = match &e {
                    SendFailure::Session(e) => e.to_string(),
                    SendFailure::Source { at } => format!("source failed at {at}"),
                };
                self.close(conn, SENDER_END, close_code::ABORTED, &reason);
                self.finish_tx(i, Err(e));
                return true;
            }
        }
        if self.txs[i].session.stats().acked > 0 {
            self.txs[i].backoff.reset();
        }
        true
    }

    // -- the receiver -----------------------------------------------------

    fn pump_receiver(&mut self) -> bool {
        let mut progress = false;
        let now = self.now;
        // Connections reaching the receiver: `handle_connection`'s ticket.
        for id in 0..self.conns.len() {
            let c = &self.conns[id];
            if c.rx_opened || c.rx_open_at.is_none_or(|t| t > now) {
                continue;
            }
            self.conns[id].rx_opened = true;
            progress = true;
            if !self.conns[id].open[RECEIVER_END] {
                continue;
            }
            let key = PublicKey(self.txs[self.conns[id].sender].spec.key);
            let load = self.client_load(&key);
            if let Err(busy) = self.admission.connection(&load) {
                let reason = busy.to_string();
                self.close(id, RECEIVER_END, close_code::BUSY, &reason);
                self.events.push(Event::Refused {
                    code: RefuseCode::Busy,
                    reason,
                });
                continue;
            }
            self.rx_conns.insert(
                id,
                RxConn {
                    key,
                    stage: Stage::Hello,
                },
            );
        }
        let ids: Vec<usize> = self.rx_conns.keys().copied().collect();
        for id in ids {
            progress |= self.pump_rx_conn(id);
        }
        // The reaper: detached sessions whose grace ran out.
        let at = self.at(now);
        let expired: Vec<SessionId> = self
            .held
            .iter()
            .filter(|(_, h)| h.conn.is_none() && h.session.poll_timeout().is_some_and(|t| t <= at))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(mut h) = self.held.remove(&id) else {
                continue;
            };
            if let Err(e) = h.session.handle_timeout(at) {
                let report = h.session.finished(false, 1, None, e.to_string());
                self.remember(id, h.key, &report);
                self.events.push(Event::Failed {
                    session: id,
                    error: RecvFailure::Session(e),
                    at: now,
                });
                progress = true;
            } else {
                self.held.insert(id, h);
            }
        }
        progress
    }

    fn client_load(&self, key: &PublicKey) -> ClientLoad {
        let mut load = ClientLoad::default();
        for h in self.held.values().filter(|h| h.key == *key) {
            if h.conn.is_some() {
                load.sessions_attached += 1;
            } else {
                load.sessions_detached += 1;
            }
        }
        load.connections = self.rx_conns.values().filter(|c| c.key == *key).count();
        load
    }

    fn pump_rx_conn(&mut self, id: usize) -> bool {
        let now = self.now;
        let mut progress = false;
        loop {
            let Some(rc) = self.rx_conns.get(&id) else {
                return progress;
            };
            if let Stage::Closing { at, code, reason } = &rc.stage {
                let due = *at <= now || self.due_notice(id, RECEIVER_END).is_some();
                if !due {
                    return progress;
                }
                let (code, reason) = (*code, reason.clone());
                self.close(id, RECEIVER_END, code, &reason);
                self.rx_conns.remove(&id);
                return true;
            }
            let next = self.conns[id].pipes[UP].reader.next_message();
            let msg = match next {
                Ok(Some(m)) => m,
                Ok(None) => {
                    let Some(how) = self.due_notice(id, RECEIVER_END) else {
                        return progress;
                    };
                    self.conns[id].open[RECEIVER_END] = false;
                    self.rx_lost(id, how);
                    return true;
                }
                Err(e) => {
                    self.rx_undecodable(id, e);
                    return true;
                }
            };
            progress = true;
            self.rx_message(id, msg);
        }
    }

    /// The connection ended under the receiver.
    fn rx_lost(&mut self, id: usize, how: Closed) {
        let Some(rc) = self.rx_conns.remove(&id) else {
            return;
        };
        let Stage::Running(sid) = rc.stage else {
            return;
        };
        if let Closed::App(code, reason) = &how {
            if *code == close_code::ABORTED {
                self.rx_conns.insert(id, rc);
                self.end_session(id, sid, RunEnd::Aborted(reason.clone()));
                return;
            }
        }
        let at = self.at(self.now);
        if let Some(h) = self.held.get_mut(&sid) {
            h.session.disconnected(at);
            if h.conn == Some(id) {
                h.conn = None;
            }
        }
    }

    fn rx_undecodable(&mut self, id: usize, e: DecodeError) {
        let Some(rc) = self.rx_conns.get(&id) else {
            return;
        };
        match rc.stage {
            Stage::Running(sid) => {
                self.end_session(id, sid, RunEnd::Failed(RecvFailure::Undecodable(e), 1))
            }
            _ => {
                let reason = format!("undecodable message: {e}");
                self.refuse_conn(id, RefuseCode::Other, reason);
            }
        }
    }

    /// `refuse_conn`: the refusal, flushed, then the close.
    /// Records how a session ended, as the server's table does.
    fn remember(&mut self, sid: SessionId, key: PublicKey, report: &Message) {
        if let Message::Report(r) = report {
            let at = self.at(self.now);
            self.ended.record(sid, key, r.clone(), at);
        }
    }

    fn refuse_conn(&mut self, id: usize, code: RefuseCode, reason: String) {
        let (m, err) = *refuse(code, reason);
        self.write(id, DOWN, &m);
        let at = self.flushed_at(id, DOWN);
        if let Some(rc) = self.rx_conns.get_mut(&id) {
            rc.stage = Stage::Closing {
                at,
                code: close_code::REFUSED,
                reason: err.to_string(),
            };
        }
        if let SessionError::Refused { code, reason } = err {
            self.events.push(Event::Refused { code, reason });
        }
    }

    fn rx_message(&mut self, id: usize, msg: Message) {
        let Some(rc) = self.rx_conns.get(&id) else {
            return;
        };
        let key = rc.key;
        match rc.stage {
            Stage::Hello => {
                let mut hs = Handshake::AwaitHello;
                match hs.hello(msg, &key.0) {
                    Ok(()) => {
                        if let (Handshake::AwaitOffer { version }, Some(rc)) =
                            (hs, self.rx_conns.get_mut(&id))
                        {
                            rc.stage = Stage::Offer { version };
                        }
                    }
                    Err(r) => {
                        if let Message::Refuse { code, reason } = r.0 {
                            self.refuse_conn(id, code, reason);
                        }
                    }
                }
            }
            Stage::Offer { version } => match msg {
                Message::Offer(o) if o.flags & !offer_flags::KNOWN == 0 => {
                    self.serve_offer(id, key, version, o)
                }
                Message::Offer(o) => self.refuse_conn(
                    id,
                    RefuseCode::Other,
                    format!("offer flags {:#x} are not understood", o.flags),
                ),
                other => self.refuse_conn(
                    id,
                    RefuseCode::Other,
                    format!("expected offer, got {}", other.kind()),
                ),
            },
            Stage::Running(sid) => self.run_session(id, sid, msg),
            Stage::Closing { .. } => {}
        }
    }

    fn serve_offer(&mut self, id: usize, key: PublicKey, version: u16, offer: Offer) {
        if offer.resuming && !self.held.contains_key(&offer.session) {
            let at = self.at(self.now);
            if let Some(report) = self.ended.report(&offer.session, &key, at) {
                self.replays += 1;
                self.write(id, DOWN, &Message::Report(report));
                if let Some(rc) = self.rx_conns.get_mut(&id) {
                    rc.stage = Stage::Closing {
                        at: self.now + GOODBYE_WAIT,
                        code: close_code::DONE,
                        reason: "done".into(),
                    };
                }
                return;
            }
        }
        let decision = {
            fn view<'a>((sid, h): (&'a SessionId, &'a Held)) -> SessionView<'a> {
                SessionView {
                    id: *sid,
                    key: &h.key,
                    offer: &h.offer,
                    holder: if h.conn.is_some() {
                        Holder::Attached
                    } else {
                        Holder::Detached
                    },
                }
            }
            let same_id = self.held.get_key_value(&offer.session).map(view);
            let same_dataset: Vec<SessionView<'_>> = self
                .held
                .iter()
                .map(view)
                .filter(|v| {
                    v.key == &key && v.offer.dataset == offer.dataset && v.id != offer.session
                })
                .collect();
            let global = GlobalLoad {
                sessions: self.held.len(),
                connections: self.rx_conns.len(),
            };
            self.admission.offer(
                &key,
                &offer,
                &self.client_load(&key),
                &global,
                same_id,
                &same_dataset,
            )
        };
        let sid = offer.session;
        let at = self.at(self.now);
        let answer = match decision {
            Decision::Busy(b) => return self.refuse_conn(id, RefuseCode::Busy, b.to_string()),
            Decision::Refuse(r) => return self.refuse_conn(id, r.code(), r.peer_reason()),
            Decision::Takeover => {
                let Some(old) = self.held.get_mut(&sid).map(|h| h.conn.replace(id)) else {
                    return self.refuse_conn(id, RefuseCode::UnknownSession, "gone".into());
                };
                if let Some(old) = old.filter(|c| *c != id) {
                    self.takeovers += 1;
                    self.close(old, RECEIVER_END, close_code::TAKEN_OVER, "taken over");
                    self.rx_conns.remove(&old);
                }
                let Some(h) = self.held.get_mut(&sid) else {
                    return;
                };
                // The old connection's task ends first (lost), then the
                // new one reattaches.
                h.session.disconnected(at);
                match h.session.reattach(&offer, &key.0, version) {
                    Ok(a) => a,
                    Err(r) => {
                        if h.conn == Some(id) {
                            h.conn = None;
                        }
                        let (m, _) = *r;
                        if let Message::Refuse { code, reason } = m {
                            self.refuse_conn(id, code, reason);
                        }
                        return;
                    }
                }
            }
            Decision::Accept | Decision::Replace(_) => {
                if let Decision::Replace(old) = decision {
                    if self.held.remove(&old).is_some() {
                        self.events.push(Event::Failed {
                            session: old,
                            error: RecvFailure::Replaced,
                            at: self.now,
                        });
                    }
                }
                let session = ReceiverSession::new(offer.clone(), key.0, version, self.cfg.grace);
                let answer = session.answer();
                self.held.insert(
                    sid,
                    Held {
                        session,
                        conn: Some(id),
                        key,
                        offer,
                        sink: BytesMut::new(),
                    },
                );
                answer
            }
        };
        if let Some(rc) = self.rx_conns.get_mut(&id) {
            rc.stage = Stage::Running(sid);
        }
        self.write(id, DOWN, &answer);
    }

    fn run_session(&mut self, id: usize, sid: SessionId, msg: Message) {
        let Some(h) = self.held.get_mut(&sid) else {
            return;
        };
        let action = match h.session.handle(msg) {
            Ok(a) => a,
            Err(SessionError::PeerAborted(why)) => {
                return self.end_session(id, sid, RunEnd::Aborted(why))
            }
            Err(e) => return self.end_session(id, sid, RunEnd::Failed(RecvFailure::Session(e), 1)),
        };
        match action {
            Action::None => {}
            Action::Send(m) => self.write(id, DOWN, &m),
            Action::Deliver {
                start,
                end,
                payload,
                ..
            } => {
                if start != h.sink.len() as u64 {
                    let why = format!(
                        "delivery at {start} does not continue the {} bytes stored",
                        h.sink.len()
                    );
                    return self.end_session(id, sid, RunEnd::Failed(RecvFailure::Sink(why), 1));
                }
                h.sink.extend_from_slice(&payload);
                let ack = h.session.delivered(end);
                self.write(id, DOWN, &ack);
            }
            Action::Finish { length, .. } => {
                if length != h.sink.len() as u64 {
                    let why = format!("finished at {length} with {} bytes stored", h.sink.len());
                    return self.end_session(id, sid, RunEnd::Failed(RecvFailure::Sink(why), 1));
                }
                let report = h
                    .session
                    .finished(true, 0, Some(h.offer.to.guid), "stored".into());
                let stats = h.session.stats();
                let Some(h) = self.held.remove(&sid) else {
                    return;
                };
                self.stored.insert(h.offer.dataset.clone(), h.sink.freeze());
                self.remember(sid, h.key, &report);
                self.write(id, DOWN, &report);
                if let Some(rc) = self.rx_conns.get_mut(&id) {
                    rc.stage = Stage::Closing {
                        at: self.now + GOODBYE_WAIT,
                        code: close_code::DONE,
                        reason: "done".into(),
                    };
                }
                self.events.push(Event::Completed {
                    session: sid,
                    stats,
                });
            }
        }
    }

    /// `end_session`: the sink is discarded, the session leaves the table,
    /// the report is flushed, then the connection is closed.
    fn end_session(&mut self, id: usize, sid: SessionId, end: RunEnd) {
        let Some(mut h) = self.held.remove(&sid) else {
            return;
        };
        let (why, status, error) = match end {
            RunEnd::Failed(e, status) => {
                let why = match &e {
                    RecvFailure::Session(s) => s.to_string(),
                    RecvFailure::Undecodable(d) => format!("undecodable message: {d}"),
                    RecvFailure::Replaced => "replaced".into(),
                    RecvFailure::Sink(s) => s.clone(),
                };
                (why, status, e)
            }
            RunEnd::Aborted(why) => (
                why.clone(),
                1,
                RecvFailure::Session(SessionError::PeerAborted(why)),
            ),
        };
        let report = h.session.finished(false, status, None, why.clone());
        self.remember(sid, h.key, &report);
        if self.conns[id].open[RECEIVER_END] {
            self.write(id, DOWN, &report);
        }
        let at = self.flushed_at(id, DOWN);
        if let Some(rc) = self.rx_conns.get_mut(&id) {
            rc.stage = Stage::Closing {
                at,
                code: close_code::FAILED,
                reason: why,
            };
        }
        self.events.push(Event::Failed {
            session: sid,
            error,
            at: self.now,
        });
    }
}
