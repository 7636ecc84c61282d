//! # fjord-sink
//!
//! The receiver's side of a transfer, below the network: where a stream
//! goes once the transport has it. No QUIC here; the transport's server
//! drives these through the [`Sink`] and [`SinkFactory`] traits.
//!
//! - [`Sink`], [`SinkFactory`], [`SinkError`]: what a receiving session
//!   writes into, and how its failures reach the sender.
//! - [`verifier`]: the pure [`Verifier`] that lets through only
//!   checksum-verified bytes and holds the stream's END until the proof.
//! - [`file`]: the [`FileSink`] that stores each stream as a file.
//! - [`packed`]: a packed transfer unpacked frame by frame into a sink.
//! - [`threaded`]: a sink on its own thread, overlapping network and disk.
//! - [`chunk_cache`]: the receiver's per-sender chunk caches and the
//!   inventories that let a sender reference what they hold.
#![warn(missing_docs)]

pub mod chunk_cache;
pub mod file;
pub mod packed;
pub mod threaded;
pub mod verifier;

pub use file::{stream_file_name, FileSink, FileSinkFactory};
pub use verifier::{Verifier, VerifierOptions};

use bytes::Bytes;
use fjord_proto::message::{Offer, RefuseCode};
use fjord_proto::PublicKey;
use fjord_stream::StreamError;
use thiserror::Error;

/// Why a sink failed.
#[derive(Debug, Error)]
pub enum SinkError {
    /// The stream is damaged or invalid.
    #[error("the stream is invalid: {0}")]
    Stream(#[from] StreamError),
    /// Unverified data grew beyond the limit.
    #[error("more than {limit_mib} MiB of stream without a checksum to verify it (at byte {at}); this stream cannot be verified with bounded memory")]
    HeldTooMuch {
        /// The limit.
        limit_mib: u64,
        /// Stream offset reached.
        at: u64,
    },
    /// Writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The receiver refuses the offer: its name, its policy, or what it
    /// already holds say no. Retrying the same offer would not help.
    #[error("{reason}")]
    Refused {
        /// What the sender is told (see [`SinkError::refuse_code`]).
        code: RefuseCode,
        /// Why, for the operator on both sides.
        reason: String,
    },
    /// The downstream failed: `zfs recv` (or a `zfs` command the sink ran
    /// before it, such as a rollback) exited non-zero, or could not run.
    #[error("{what} {}: {}", downstream_words(*status), stderr.trim())]
    Downstream {
        /// What ran, for the message (`zfs recv into backup/fs@b`).
        what: String,
        /// Its exit status; `None` when it never ran or no status is
        /// known (then `stderr` says why).
        status: Option<i32>,
        /// What it wrote to stderr (or why it could not run).
        stderr: String,
    },
    /// A bug or a local failure that is neither the stream's, the
    /// sender's nor the downstream's: a write out of order, a sink thread
    /// that cannot start, a sink used after it closed.
    #[error("internal error in the receiver: {0}")]
    Internal(String),
    /// Another transfer is writing the same target.
    #[error("{0}")]
    Busy(String),
    /// The frame encoding is not supported by this sink.
    #[error("frame encoding {0:?} is not supported by this receiver; upgrade fjord-recv")]
    Encoding(fjord_proto::message::FrameEncoding),
    /// A compound (`zfs send -R` or `-I`) package reached a receiver that
    /// takes single streams only. A package carries one END per
    /// substream, and `zfs recv` commits each substream's snapshot at its
    /// END: before the sender's End and the announced length could be
    /// checked. fjord does not send packages.
    #[error("compound (zfs send -R) streams are not accepted by this receiver")]
    Compound,
    /// The stream verified up to its final END, but the sender announced
    /// another length: the END was not released, nothing was committed.
    #[error("verified {verified} bytes but the sender announced {announced}; the stream's END was held back and nothing was committed")]
    LengthMismatch {
        /// Bytes of stream verified, the held END included.
        verified: u64,
        /// The length the sender announced.
        announced: u64,
    },
    /// The input ended with bytes no checksum covers.
    #[error("{bytes} bytes at the end of the stream were never covered by a checksum")]
    Unverified {
        /// How many.
        bytes: u64,
    },
    /// The verifier already failed or finished; it takes nothing more.
    #[error("the stream verifier already failed or finished; nothing more is accepted")]
    VerifierClosed,
    /// The pack of a packed transfer is invalid (damaged, incomplete, or
    /// its receipt does not match the stream it rebuilt).
    #[error("the packed stream is invalid: {0}")]
    Pack(#[from] fjord_pack::UnpackError),
    /// The sender's End announced another pack length than arrived.
    #[error("the sender announced {announced} pack bytes but {arrived} arrived")]
    PackLengthMismatch {
        /// The length the sender announced.
        announced: u64,
        /// Pack bytes that arrived.
        arrived: u64,
    },
    /// The pack's receipt names another stream length than was decoded.
    #[error("the pack's receipt says {receipt} stream bytes but {decoded} were decoded")]
    ReceiptLength {
        /// The receipt's stream length.
        receipt: u64,
        /// Stream bytes decoded.
        decoded: u64,
    },
}

fn downstream_words(status: Option<i32>) -> String {
    match status {
        Some(code) => format!("exited {code}"),
        None => "failed".into(),
    }
}

impl SinkError {
    /// A refusal with `code` and `reason`.
    pub fn refused(code: RefuseCode, reason: impl Into<String>) -> SinkError {
        SinkError::Refused {
            code,
            reason: reason.into(),
        }
    }

    /// The refusal code the sender gets when opening a sink fails with
    /// this error: a refusal's own code, [`RefuseCode::Busy`] for a busy
    /// target, [`RefuseCode::Other`] for an internal error and
    /// [`RefuseCode::SinkFailed`] for everything that failed while
    /// storing (the downstream, the disk, the stream).
    pub fn refuse_code(&self) -> RefuseCode {
        match self {
            SinkError::Refused { code, .. } => *code,
            SinkError::Busy(_) => RefuseCode::Busy,
            SinkError::Internal(_) => RefuseCode::Other,
            _ => RefuseCode::SinkFailed,
        }
    }

    /// The downstream exit status for the sender's report of a session
    /// that failed with this error: the downstream's own status when it
    /// exited, 1 otherwise.
    pub fn report_status(&self) -> i32 {
        match self {
            SinkError::Downstream {
                status: Some(code), ..
            } if *code != 0 => *code,
            _ => 1,
        }
    }
}

/// What a finished sink reports.
#[derive(Clone, Debug, Default)]
pub struct SinkOutcome {
    /// Downstream exit status (0 for files).
    pub status: i32,
    /// Guid of the snapshot the stream creates (its last BEGIN's toguid).
    pub snapshot_guid: Option<u64>,
    /// For the operator: where the stream went.
    pub message: String,
}

/// The downstream of a receiving session. Calls are blocking; the driver
/// runs them on a blocking thread.
pub trait Sink: Send {
    /// Stream bytes at `start` (always contiguous with the last call).
    fn write(&mut self, start: u64, data: Bytes) -> Result<(), SinkError>;
    /// The stream is complete at `length` bytes: verify and commit.
    fn finish(&mut self, length: u64) -> Result<SinkOutcome, SinkError>;
    /// The session failed: discard everything, present nothing as complete.
    fn abort(&mut self, why: &str);
}

/// Checks that a write at `start` continues where the last one ended
/// (`next`), then moves `next` past its `len` bytes. Every sink keeps this
/// invariant of the session layer; a gap is a bug, refused rather than
/// written.
pub fn advance_contiguous(next: &mut u64, start: u64, len: usize) -> Result<(), SinkError> {
    if start != *next {
        return Err(SinkError::Internal(format!(
            "write at stream offset {start}, expected {next}"
        )));
    }
    *next += len as u64;
    Ok(())
}

/// Makes a sink for each accepted offer.
pub trait SinkFactory: Send + Sync + 'static {
    /// A sink for `offer` from the sender whose key is `peer`, or why it
    /// is refused (the factory decides what that sender may write).
    fn open(&self, offer: &Offer, peer: &PublicKey) -> Result<Box<dyn Sink>, SinkError>;
}

#[cfg(test)]
mod tests;
