//! # fjord-proto
//!
//! fjord's session protocol, sans-IO: no sockets, no clocks (time is an
//! argument), no QUIC and no pack types (chunk hashes are bytes on the
//! wire). The QUIC driver (`fjord-transport`) and the simulation in this
//! crate's tests drive the same machines.
//!
//! - [`message`]: the versioned messages and their fuzz-safe decoder.
//! - [`sender`] and [`receiver`]: the two ends' state machines (hello,
//!   offer, answer, data frames with stream offsets, acks of the offset
//!   delivered downstream, end, report; grace periods; the bounded replay
//!   buffer).
//! - [`admission`]: per-client limits, the memory budget and takeover
//!   checks, as pure decisions over counts.
//! - [`ended`]: the reports of recently ended sessions, replayed to a
//!   sender that resumes after losing one.
//! - [`pace`]: reconnection backoff and the bandwidth limit.
//! - [`key`]: peers' public keys.
//!
//! A transfer is one session, identified by a random [`SessionId`]; it
//! survives connections. When the link drops, both ends keep the session
//! for a grace period; the sender reconnects with backoff and the receiver
//! answers `Resume` at the offset it delivered downstream, so at most the
//! replay window is sent again.
#![warn(missing_docs)]

pub mod admission;
pub mod ended;
pub mod key;
pub mod message;
pub mod pace;
pub mod receiver;
pub mod sender;

pub use key::{PublicKey, PublicKeyError};
pub use message::{
    offer_flags, Message, Offer, RefuseCode, Request, Response, SessionId, Snapshot,
    TargetSnapshot, TargetState,
};
pub use pace::{Backoff, BackoffConfig, RateLimiter};
pub use receiver::{ReceiverSession, ReceiverStats};
pub use sender::{SenderSession, SenderStats};

use std::time::Duration;
use thiserror::Error;

/// Why a session failed (both ends).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The peer refused.
    #[error("refused by the receiver ({code}): {reason}")]
    Refused {
        /// The code.
        code: RefuseCode,
        /// The peer's reason.
        reason: String,
    },
    /// No working connection for the whole grace period.
    #[error("the link stayed down longer than the grace period of {}s ({delivered} bytes had been delivered); the session is abandoned and the receiver discards the partial stream. Check the link, or raise --grace", grace.as_secs())]
    GraceExpired {
        /// The grace period.
        grace: Duration,
        /// Bytes delivered downstream before.
        delivered: u64,
    },
    /// The receiver asked to resume where the replay buffer no longer reaches.
    #[error("the receiver asked to resume at offset {offset}, but the replay buffer holds {base}..{produced}; the receiver probably lost its session (restarted). Send the stream again")]
    ResumeOutsideWindow {
        /// Requested offset.
        offset: u64,
        /// Oldest offset still held.
        base: u64,
        /// Newest offset produced.
        produced: u64,
    },
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer aborted the session.
    #[error("the peer aborted the session: {0}")]
    PeerAborted(String),
    /// The receiver answered `Busy` (a transfer into the same dataset, or
    /// one of its limits) every time for the whole grace period.
    #[error("the receiver stayed busy for the whole grace period of {}s ({reason}); another transfer into the same dataset is running, or this sender is at one of the receiver's limits. Try again later, or raise --grace", grace.as_secs())]
    ReceiverBusy {
        /// The grace period.
        grace: Duration,
        /// The receiver's last reason.
        reason: String,
    },
    /// The receiver reported failure.
    #[error("the receiver failed to store the stream: {0}")]
    ReceiverFailed(String),
    /// A bug in the caller's use of the state machine.
    #[error("internal error: {0}")]
    Internal(String),
}

/// QUIC application close codes, also the error codes of a stream reset
/// (`RESET_STREAM`): a sender giving up resets its stream with
/// [`ABORTED`](close_code::ABORTED), a receiver whose session a newer
/// stream took over resets the old one with
/// [`TAKEN_OVER`](close_code::TAKEN_OVER); other streams of the
/// connection go on.
pub mod close_code {
    /// The session completed.
    pub const DONE: u32 = 0;
    /// The offer or hello was refused.
    pub const REFUSED: u32 = 1;
    /// The peer broke the protocol.
    pub const PROTOCOL: u32 = 2;
    /// A newer stream (or connection) of the same session replaced this
    /// one.
    pub const TAKEN_OVER: u32 = 3;
    /// The session failed.
    pub const FAILED: u32 = 4;
    /// The endpoint is shutting down.
    pub const SHUTDOWN: u32 = 5;
    /// The sender gave up the session for good (its source failed, or it
    /// failed otherwise): the receiver ends the session at once instead
    /// of keeping it for the grace period.
    pub const ABORTED: u32 = 6;
    /// The receiver is at a limit for this sender (its connections); the
    /// sender retries with backoff.
    pub const BUSY: u32 = 7;
}
