//! The session messages and their wire encoding.
//!
//! Every message travels on one QUIC stream as a frame:
//!
//! ```text
//! frame   := length:u32be  body            (length = body length, ≤ MAX_MESSAGE_LEN)
//! body    := type:u8  fields…
//! string  := len:u16be  UTF-8 bytes        (≤ MAX_STRING_LEN)
//! bytes   := len:u32be  bytes
//! option  := 0 | 1 value
//! ```
//!
//! Integers are big-endian. A body must be consumed exactly: trailing bytes
//! are an error. The protocol version is negotiated by [`Message::Hello`]
//! (the sender's supported range) and [`Answer`] (the receiver's choice);
//! the frame layout and the `Hello`/`Refuse` bodies are frozen across
//! versions so that two versions can always tell each other they differ.
//!
//! The decoder is total: any byte string yields a message or a
//! [`DecodeError`], never a panic, and never allocates more than the frame
//! it was given (fuzzed by `fuzz/fuzz_targets/transport_message.rs`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// The protocol version this build speaks (the only one so far).
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Largest data payload of one [`Message::Data`] frame (16 MiB, OpenZFS's
/// largest block plus room for a record header).
pub const MAX_PAYLOAD_LEN: usize = 16 << 20;
/// Largest body of one message.
pub const MAX_MESSAGE_LEN: usize = MAX_PAYLOAD_LEN + 4096;
/// Largest string field (dataset and snapshot names; reasons).
pub const MAX_STRING_LEN: usize = 4096;
/// Largest opaque receipt carried by [`Message::End`].
pub const MAX_RECEIPT_LEN: usize = 1 << 20;
/// Length of a raw Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Most chunk addresses in one [`Response::ChunkInventory`] (8 MiB of
/// addresses: 32 GiB of 128 KiB blocks).
pub const MAX_INVENTORY: usize = 1 << 18;

/// Identifies one transfer across reconnections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u128);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A snapshot named in an offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Snapshot name (`pool/fs@snap`, or just `snap`).
    pub name: String,
    /// Its guid (0 if unknown).
    pub guid: u64,
}

/// What the sender proposes to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The transfer; the same across reconnections.
    pub session: SessionId,
    /// True when this connection continues a session begun earlier.
    pub resuming: bool,
    /// Target dataset on the receiver.
    pub dataset: String,
    /// Base snapshot of an incremental stream.
    pub from: Option<Snapshot>,
    /// Snapshot the stream creates.
    pub to: Snapshot,
    /// Stream flags (reserved; 0 today).
    pub flags: u64,
    /// Expected stream length in bytes, when known.
    pub size_estimate: Option<u64>,
}

/// Bits of [`Offer::flags`].
pub mod offer_flags {
    /// Roll the target back to the offer's `from` snapshot (destroying
    /// later snapshots and changes) before receiving: the sender's
    /// `--force` for a diverged target.
    pub const FORCE_ROLLBACK: u64 = 1;
    /// The stream continues an interrupted `zfs recv -s` (it comes from
    /// `zfs send -t TOKEN`); the receiver keeps the partial state.
    pub const RESUME_TOKEN: u64 = 2;
    /// The transfer carries a `fjord-pack` pack of the stream (offsets
    /// count pack bytes); the receiver decodes it before its sink.
    pub const PACKED: u64 = 4;
    /// A raw (`zfs send -w`) stream of a dataset that inherits its key from
    /// its parent on the sender, whose copy is the target's parent: the
    /// receiver makes the copy inherit its parent's encryption root again
    /// (a per-dataset raw receive makes every copy an encryption root of
    /// its own).
    pub const INHERIT_KEY: u64 = 8;
    /// Every bit this version understands; a receiver refuses others.
    pub const KNOWN: u64 = FORCE_ROLLBACK | RESUME_TOKEN | PACKED | INHERIT_KEY;
}

/// A snapshot of a target dataset, as a receiver reports it for the
/// sender's planning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSnapshot {
    /// Short name (after the `@`).
    pub name: String,
    /// Its guid (the same on both sides for a replicated snapshot).
    pub guid: u64,
    /// The transaction group that created it (orders snapshots).
    pub createtxg: u64,
    /// Creation time, Unix seconds.
    pub creation: i64,
}

/// What a receiver has of one target dataset.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TargetState {
    /// The dataset.
    pub dataset: String,
    /// Whether it exists (a partially received new dataset counts).
    pub exists: bool,
    /// Its snapshots, oldest first.
    pub snapshots: Vec<TargetSnapshot>,
    /// `receive_resume_token`, when an interrupted `zfs recv -s` left one.
    pub resume_token: Option<String>,
    /// Bytes written since its newest snapshot (`written`): non-zero means
    /// someone changed the target.
    pub written: u64,
}

/// A control request from a sender, answered by one [`Response`]; sent
/// instead of an offer on a stream of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Report the target's snapshots and resume token.
    TargetState {
        /// The target dataset.
        dataset: String,
    },
    /// Discard the partial state of an interrupted receive (`zfs recv -A`),
    /// because the sender cannot continue it (its snapshot is gone).
    AbortResume {
        /// The target dataset.
        dataset: String,
    },
    /// Destroy these snapshots of the target (retention, after a
    /// successful push).
    DestroySnapshots {
        /// The target dataset.
        dataset: String,
        /// Short snapshot names.
        snapshots: Vec<String>,
    },
    /// Promote the target to `snapshot` (a planned switchover: the primary
    /// has stopped writing and pushed its final snapshot). The DR node's
    /// policy must grant it to this client (`allow_promote`); promoting a
    /// target already promoted to the same snapshot is done again
    /// harmlessly.
    Promote {
        /// The target dataset.
        dataset: String,
        /// The recovery point's short name: the primary's final snapshot.
        snapshot: String,
    },
    /// List the datasets at and below `dataset` (a recursive job's target
    /// root), answered by [`Response::Tree`]: the sender finds the copies
    /// whose source children were destroyed on the primary.
    ListTree {
        /// The target root.
        dataset: String,
    },
    /// Destroy the copy `dataset` and everything below it: its source was
    /// destroyed on the primary. The DR node's policy decides
    /// (`allow_destroy_removed`); a refusal keeps the copy.
    DestroyCopy {
        /// The copy.
        dataset: String,
    },
    /// Rename the copy `dataset` (with everything below it) to `to`: its
    /// source was renamed on the primary (the copy's snapshots are the
    /// renamed source's, by guid), so the next push continues it
    /// incrementally instead of sending it again in full. The DR node's
    /// policy decides (`allow_rename`); a refusal keeps the copy where it is.
    RenameCopy {
        /// The copy.
        dataset: String,
        /// Its new name, which must not exist.
        to: String,
    },
    /// Which chunks does the receiver's chunk cache promise to hold for the
    /// packed transfer `session` (sent next)? Answered by the transport
    /// itself, not by the receiver's control service.
    ChunkInventory {
        /// The transfer the promise is for.
        session: SessionId,
    },
}

impl Request {
    /// The dataset the request is about (empty for a chunk inventory,
    /// which is about the sender's cache, not a dataset).
    pub fn dataset(&self) -> &str {
        match self {
            Request::TargetState { dataset }
            | Request::AbortResume { dataset }
            | Request::DestroySnapshots { dataset, .. }
            | Request::Promote { dataset, .. }
            | Request::ListTree { dataset }
            | Request::DestroyCopy { dataset }
            | Request::RenameCopy { dataset, .. } => dataset,
            Request::ChunkInventory { .. } => "",
        }
    }
}

/// The receiver's answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Answer to [`Request::TargetState`].
    TargetState(TargetState),
    /// Answer to [`Request::ChunkInventory`]: chunks the receiver holds
    /// (newest first) and keeps until the transfer ends. References to
    /// them need not carry their bytes.
    ChunkInventory {
        /// BLAKE3 addresses (32 bytes each), at most [`MAX_INVENTORY`].
        hashes: Vec<[u8; 32]>,
    },
    /// Answer to [`Request::ListTree`]: the datasets at and below it, by
    /// full name, parents first (empty when it does not exist).
    Tree {
        /// Full dataset names.
        datasets: Vec<String>,
    },
    /// The request was carried out.
    Done {
        /// What was done.
        message: String,
    },
    /// The request was refused or failed.
    Failed {
        /// Machine-readable reason.
        code: RefuseCode,
        /// What the operator should know.
        message: String,
    },
}

/// Why a receiver refuses an offer or a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseCode {
    /// No protocol version in common.
    UnsupportedVersion,
    /// The session is not known here (grace period expired, or the
    /// receiver restarted), so it cannot be resumed.
    UnknownSession,
    /// The target is busy with another transfer.
    Busy,
    /// The dataset name is not acceptable.
    BadDataset,
    /// The receiver cannot store the stream: its downstream (`zfs recv`,
    /// `zfs rollback`, the disk) failed; the reason quotes its exit status
    /// and its own words.
    SinkFailed,
    /// The DR node's policy does not grant what the offer or request asks
    /// (a rollback, a destroy). Since wire code 6; an older peer decodes
    /// it as [`RefuseCode::Unknown`] and still shows the reason.
    Policy,
    /// What the offer would create exists already on the receiver (a
    /// stored stream file). Since wire code 7, like [`RefuseCode::Policy`].
    Exists,
    /// The target was promoted on the DR node (failover): it is a primary
    /// now and takes no pushes; the reason says when and how to fail back.
    /// Since wire code 8, like [`RefuseCode::Policy`].
    Promoted,
    /// Anything else (a bug, a malformed offer); see the reason text.
    Other,
    /// A code this version does not know (from a newer peer).
    Unknown(u8),
}

impl std::fmt::Display for RefuseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefuseCode::UnsupportedVersion => f.write_str("unsupported version"),
            RefuseCode::UnknownSession => f.write_str("unknown session"),
            RefuseCode::Busy => f.write_str("busy"),
            RefuseCode::BadDataset => f.write_str("bad dataset"),
            RefuseCode::SinkFailed => f.write_str("receiver's storage failed"),
            RefuseCode::Policy => f.write_str("DR policy"),
            RefuseCode::Exists => f.write_str("already exists"),
            RefuseCode::Promoted => f.write_str("promoted on the DR node"),
            RefuseCode::Other => f.write_str("other"),
            RefuseCode::Unknown(v) => write!(
                f,
                "unknown refusal code {v}, from a newer fjord-recv; see the reason"
            ),
        }
    }
}

impl RefuseCode {
    fn to_u8(self) -> u8 {
        match self {
            RefuseCode::UnsupportedVersion => 1,
            RefuseCode::UnknownSession => 2,
            RefuseCode::Busy => 3,
            RefuseCode::BadDataset => 4,
            RefuseCode::SinkFailed => 5,
            RefuseCode::Policy => 6,
            RefuseCode::Exists => 7,
            RefuseCode::Promoted => 8,
            RefuseCode::Other => 255,
            RefuseCode::Unknown(v) => v,
        }
    }

    fn from_u8(v: u8) -> RefuseCode {
        match v {
            1 => RefuseCode::UnsupportedVersion,
            2 => RefuseCode::UnknownSession,
            3 => RefuseCode::Busy,
            4 => RefuseCode::BadDataset,
            5 => RefuseCode::SinkFailed,
            6 => RefuseCode::Policy,
            7 => RefuseCode::Exists,
            8 => RefuseCode::Promoted,
            255 => RefuseCode::Other,
            // Unknown codes from newer peers are still a refusal.
            v => RefuseCode::Unknown(v),
        }
    }
}

/// The receiver's answer to an offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Start sending at offset 0.
    Accept {
        /// The protocol version chosen.
        version: u16,
    },
    /// Continue from `offset`: everything before it has been delivered.
    Resume {
        /// The protocol version chosen.
        version: u16,
        /// Stream offset to resend from.
        offset: u64,
    },
    /// Continue from a ZFS `receive_resume_token` (`zfs send -t`).
    ResumeToken {
        /// The protocol version chosen.
        version: u16,
        /// The token.
        token: String,
    },
}

/// How a data frame's payload encodes the stream bytes it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameEncoding {
    /// The payload is the stream bytes themselves.
    Raw,
    /// A `fjord-pack` frame (reserved for issue 3).
    Pack,
}

impl FrameEncoding {
    fn to_u8(self) -> u8 {
        match self {
            FrameEncoding::Raw => 0,
            FrameEncoding::Pack => 1,
        }
    }
}

/// One frame of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFrame {
    /// Stream offset of the first byte covered.
    pub start: u64,
    /// Stream offset just past the last byte covered.
    pub end: u64,
    /// Payload encoding.
    pub encoding: FrameEncoding,
    /// The payload.
    pub payload: Bytes,
}

/// Bytes of a data message before its payload (length prefix, type,
/// start, end, encoding, payload length).
pub const DATA_HEADER_LEN: usize = 4 + 1 + 8 + 8 + 1 + 4;

impl DataFrame {
    /// The framed message's bytes before the payload: send these, then
    /// the payload itself, to put the message on the wire without copying
    /// the payload ([`Message::encode`] gives the same bytes in one piece).
    pub fn encode_header(&self) -> [u8; DATA_HEADER_LEN] {
        let mut h = [0u8; DATA_HEADER_LEN];
        let body = (DATA_HEADER_LEN - 4 + self.payload.len()) as u32;
        h[0..4].copy_from_slice(&body.to_be_bytes());
        h[4] = tag::DATA;
        h[5..13].copy_from_slice(&self.start.to_be_bytes());
        h[13..21].copy_from_slice(&self.end.to_be_bytes());
        h[21] = self.encoding.to_u8();
        h[22..26].copy_from_slice(&(self.payload.len() as u32).to_be_bytes());
        h
    }

    /// A raw frame of `payload` at `start`.
    pub fn raw(start: u64, payload: Bytes) -> DataFrame {
        DataFrame {
            start,
            end: start + payload.len() as u64,
            encoding: FrameEncoding::Raw,
            payload,
        }
    }
}

/// The receiver's final word on a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// True when the stream was verified and stored completely.
    pub success: bool,
    /// Exit status of the downstream (`zfs recv`; 0 for the file sink).
    pub downstream_status: i32,
    /// Stream bytes delivered downstream.
    pub delivered: u64,
    /// Guid of the snapshot received, when known.
    pub snapshot_guid: Option<u64>,
    /// What happened, for the operator.
    pub message: String,
}

/// A session message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Sender → receiver, first on every connection.
    Hello {
        /// Oldest protocol version the sender speaks.
        min_version: u16,
        /// Newest protocol version the sender speaks.
        max_version: u16,
        /// The sender's public key (also authenticated by TLS).
        sender_key: [u8; PUBLIC_KEY_LEN],
    },
    /// Sender → receiver, after `Hello`.
    Offer(Offer),
    /// Receiver → sender.
    Answer(Answer),
    /// Receiver → sender: the offer or connection is refused.
    Refuse {
        /// Machine-readable reason.
        code: RefuseCode,
        /// What the operator should know.
        reason: String,
    },
    /// Sender → receiver: stream bytes.
    Data(DataFrame),
    /// Receiver → sender: everything before `offset` is delivered downstream.
    Ack {
        /// The delivered offset.
        offset: u64,
    },
    /// Sender → receiver: the stream ends at `length`.
    End {
        /// Total stream length.
        length: u64,
        /// Opaque receipt of the pack layer (empty for raw streams).
        receipt: Bytes,
    },
    /// Receiver → sender: the outcome.
    Report(Report),
    /// Either side: the session failed and must not be retried as is.
    Abort {
        /// What went wrong.
        reason: String,
    },
    /// Sender → receiver, after `Hello`, instead of an offer.
    Request(Request),
    /// Receiver → sender: the answer to a request.
    Response(Response),
}

mod tag {
    pub const HELLO: u8 = 1;
    pub const OFFER: u8 = 2;
    pub const ACCEPT: u8 = 3;
    pub const RESUME: u8 = 4;
    pub const RESUME_TOKEN: u8 = 5;
    pub const REFUSE: u8 = 6;
    pub const DATA: u8 = 7;
    pub const ACK: u8 = 8;
    pub const END: u8 = 9;
    pub const REPORT: u8 = 10;
    pub const ABORT: u8 = 11;
    pub const REQ_TARGET_STATE: u8 = 12;
    pub const REQ_ABORT_RESUME: u8 = 13;
    pub const REQ_DESTROY: u8 = 14;
    pub const RESP_TARGET_STATE: u8 = 15;
    pub const RESP_DONE: u8 = 16;
    pub const RESP_FAILED: u8 = 17;
    pub const REQ_CHUNK_INVENTORY: u8 = 18;
    pub const RESP_CHUNK_INVENTORY: u8 = 19;
    pub const REQ_PROMOTE: u8 = 20;
    pub const REQ_LIST_TREE: u8 = 21;
    pub const RESP_TREE: u8 = 22;
    pub const REQ_DESTROY_COPY: u8 = 23;
    pub const REQ_RENAME_COPY: u8 = 24;
}

/// Why bytes are not a valid message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame length exceeds [`MAX_MESSAGE_LEN`].
    #[error("message of {len} bytes exceeds the limit of {MAX_MESSAGE_LEN}: the peer is not a compatible fjord or the connection is corrupt")]
    TooLong {
        /// The announced length.
        len: u64,
    },
    /// The body ended inside a field.
    #[error("message truncated inside field `{field}`")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// Bytes remain after the last field.
    #[error("{count} unexpected bytes after a message of type {tag}")]
    Trailing {
        /// The message type.
        tag: u8,
        /// How many bytes remain.
        count: usize,
    },
    /// Unknown message type.
    #[error("unknown message type {0}: the peer speaks a newer or a foreign protocol")]
    UnknownType(u8),
    /// A field has an invalid value.
    #[error("invalid field `{field}`: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        why: &'static str,
    },
    /// The body is empty.
    #[error("empty message")]
    Empty,
}

fn put_str(out: &mut BytesMut, s: &str) {
    // Encoders clip over-long strings at a character boundary rather than
    // emit a frame the peer must refuse.
    let mut end = s.len().min(MAX_STRING_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&s.as_bytes()[..end]);
}

fn put_opt_u64(out: &mut BytesMut, v: Option<u64>) {
    match v {
        Some(v) => {
            out.put_u8(1);
            out.put_u64(v);
        }
        None => out.put_u8(0),
    }
}

fn put_snapshot(out: &mut BytesMut, s: &Snapshot) {
    put_str(out, &s.name);
    out.put_u64(s.guid);
}

impl Message {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Offer(_) => "offer",
            Message::Answer(_) => "answer",
            Message::Refuse { .. } => "refuse",
            Message::Data(_) => "data",
            Message::Ack { .. } => "ack",
            Message::End { .. } => "end",
            Message::Report(_) => "report",
            Message::Abort { .. } => "abort",
            Message::Request(_) => "request",
            Message::Response(_) => "response",
        }
    }

    /// Appends the framed message (length prefix and body) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        match self {
            Message::Hello {
                min_version,
                max_version,
                sender_key,
            } => {
                out.put_u8(tag::HELLO);
                out.put_u16(*min_version);
                out.put_u16(*max_version);
                out.put_slice(sender_key);
            }
            Message::Offer(o) => {
                out.put_u8(tag::OFFER);
                out.put_u128(o.session.0);
                out.put_u8(o.resuming as u8);
                put_str(out, &o.dataset);
                match &o.from {
                    Some(s) => {
                        out.put_u8(1);
                        put_snapshot(out, s);
                    }
                    None => out.put_u8(0),
                }
                put_snapshot(out, &o.to);
                out.put_u64(o.flags);
                put_opt_u64(out, o.size_estimate);
            }
            Message::Answer(Answer::Accept { version }) => {
                out.put_u8(tag::ACCEPT);
                out.put_u16(*version);
            }
            Message::Answer(Answer::Resume { version, offset }) => {
                out.put_u8(tag::RESUME);
                out.put_u16(*version);
                out.put_u64(*offset);
            }
            Message::Answer(Answer::ResumeToken { version, token }) => {
                out.put_u8(tag::RESUME_TOKEN);
                out.put_u16(*version);
                put_str(out, token);
            }
            Message::Refuse { code, reason } => {
                out.put_u8(tag::REFUSE);
                out.put_u8(code.to_u8());
                put_str(out, reason);
            }
            Message::Data(f) => {
                out.put_u8(tag::DATA);
                out.put_u64(f.start);
                out.put_u64(f.end);
                out.put_u8(f.encoding.to_u8());
                out.put_u32(f.payload.len() as u32);
                out.put_slice(&f.payload);
            }
            Message::Ack { offset } => {
                out.put_u8(tag::ACK);
                out.put_u64(*offset);
            }
            Message::End { length, receipt } => {
                out.put_u8(tag::END);
                out.put_u64(*length);
                out.put_u32(receipt.len() as u32);
                out.put_slice(receipt);
            }
            Message::Report(r) => {
                out.put_u8(tag::REPORT);
                out.put_u8(r.success as u8);
                out.put_i32(r.downstream_status);
                out.put_u64(r.delivered);
                put_opt_u64(out, r.snapshot_guid);
                put_str(out, &r.message);
            }
            Message::Abort { reason } => {
                out.put_u8(tag::ABORT);
                put_str(out, reason);
            }
            Message::Request(Request::TargetState { dataset }) => {
                out.put_u8(tag::REQ_TARGET_STATE);
                put_str(out, dataset);
            }
            Message::Request(Request::AbortResume { dataset }) => {
                out.put_u8(tag::REQ_ABORT_RESUME);
                put_str(out, dataset);
            }
            Message::Request(Request::DestroySnapshots { dataset, snapshots }) => {
                out.put_u8(tag::REQ_DESTROY);
                put_str(out, dataset);
                out.put_u32(snapshots.len() as u32);
                for s in snapshots {
                    put_str(out, s);
                }
            }
            Message::Request(Request::Promote { dataset, snapshot }) => {
                out.put_u8(tag::REQ_PROMOTE);
                put_str(out, dataset);
                put_str(out, snapshot);
            }
            Message::Request(Request::ListTree { dataset }) => {
                out.put_u8(tag::REQ_LIST_TREE);
                put_str(out, dataset);
            }
            Message::Request(Request::DestroyCopy { dataset }) => {
                out.put_u8(tag::REQ_DESTROY_COPY);
                put_str(out, dataset);
            }
            Message::Request(Request::RenameCopy { dataset, to }) => {
                out.put_u8(tag::REQ_RENAME_COPY);
                put_str(out, dataset);
                put_str(out, to);
            }
            Message::Response(Response::Tree { datasets }) => {
                out.put_u8(tag::RESP_TREE);
                out.put_u32(datasets.len() as u32);
                for d in datasets {
                    put_str(out, d);
                }
            }
            Message::Response(Response::TargetState(t)) => {
                out.put_u8(tag::RESP_TARGET_STATE);
                put_str(out, &t.dataset);
                out.put_u8(t.exists as u8);
                out.put_u32(t.snapshots.len() as u32);
                for s in &t.snapshots {
                    put_str(out, &s.name);
                    out.put_u64(s.guid);
                    out.put_u64(s.createtxg);
                    out.put_i64(s.creation);
                }
                match &t.resume_token {
                    Some(tok) => {
                        out.put_u8(1);
                        put_str(out, tok);
                    }
                    None => out.put_u8(0),
                }
                out.put_u64(t.written);
            }
            Message::Request(Request::ChunkInventory { session }) => {
                out.put_u8(tag::REQ_CHUNK_INVENTORY);
                out.put_u128(session.0);
            }
            Message::Response(Response::ChunkInventory { hashes }) => {
                out.put_u8(tag::RESP_CHUNK_INVENTORY);
                // Encoders clip rather than emit a frame the peer refuses.
                let hashes = &hashes[..hashes.len().min(MAX_INVENTORY)];
                out.put_u32(hashes.len() as u32);
                for h in hashes {
                    out.put_slice(h);
                }
            }
            Message::Response(Response::Done { message }) => {
                out.put_u8(tag::RESP_DONE);
                put_str(out, message);
            }
            Message::Response(Response::Failed { code, message }) => {
                out.put_u8(tag::RESP_FAILED);
                out.put_u8(code.to_u8());
                put_str(out, message);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// The framed message as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// Decodes one message body (without its length prefix).
    pub fn decode(body: Bytes) -> Result<Message, DecodeError> {
        let mut r = Reader(body);
        let t = r.u8("type").map_err(|_| DecodeError::Empty)?;
        let msg = match t {
            tag::HELLO => {
                let min_version = r.u16("min_version")?;
                let max_version = r.u16("max_version")?;
                let key = r.take(PUBLIC_KEY_LEN, "sender_key")?;
                let mut sender_key = [0u8; PUBLIC_KEY_LEN];
                sender_key.copy_from_slice(&key);
                if min_version > max_version {
                    return Err(DecodeError::Invalid {
                        field: "min_version",
                        why: "above max_version",
                    });
                }
                Message::Hello {
                    min_version,
                    max_version,
                    sender_key,
                }
            }
            tag::OFFER => {
                let session = SessionId(r.u128("session")?);
                let resuming = r.bool("resuming")?;
                let dataset = r.string("dataset")?;
                let from = match r.bool("from")? {
                    true => Some(r.snapshot("from")?),
                    false => None,
                };
                let to = r.snapshot("to")?;
                let flags = r.u64("flags")?;
                let size_estimate = r.opt_u64("size_estimate")?;
                Message::Offer(Offer {
                    session,
                    resuming,
                    dataset,
                    from,
                    to,
                    flags,
                    size_estimate,
                })
            }
            tag::ACCEPT => Message::Answer(Answer::Accept {
                version: r.u16("version")?,
            }),
            tag::RESUME => Message::Answer(Answer::Resume {
                version: r.u16("version")?,
                offset: r.u64("offset")?,
            }),
            tag::RESUME_TOKEN => Message::Answer(Answer::ResumeToken {
                version: r.u16("version")?,
                token: r.string("token")?,
            }),
            tag::REFUSE => Message::Refuse {
                code: RefuseCode::from_u8(r.u8("code")?),
                reason: r.string("reason")?,
            },
            tag::DATA => {
                let start = r.u64("start")?;
                let end = r.u64("end")?;
                let encoding = match r.u8("encoding")? {
                    0 => FrameEncoding::Raw,
                    1 => FrameEncoding::Pack,
                    _ => {
                        return Err(DecodeError::Invalid {
                            field: "encoding",
                            why: "unknown frame encoding",
                        })
                    }
                };
                let len = r.u32("payload_len")? as usize;
                if len > MAX_PAYLOAD_LEN {
                    return Err(DecodeError::Invalid {
                        field: "payload_len",
                        why: "above the 16 MiB frame limit",
                    });
                }
                let payload = r.take(len, "payload")?;
                if end < start {
                    return Err(DecodeError::Invalid {
                        field: "end",
                        why: "before start",
                    });
                }
                if encoding == FrameEncoding::Raw && end - start != len as u64 {
                    return Err(DecodeError::Invalid {
                        field: "end",
                        why: "raw frame range differs from its payload length",
                    });
                }
                Message::Data(DataFrame {
                    start,
                    end,
                    encoding,
                    payload,
                })
            }
            tag::ACK => Message::Ack {
                offset: r.u64("offset")?,
            },
            tag::END => {
                let length = r.u64("length")?;
                let len = r.u32("receipt_len")? as usize;
                if len > MAX_RECEIPT_LEN {
                    return Err(DecodeError::Invalid {
                        field: "receipt_len",
                        why: "above the 1 MiB receipt limit",
                    });
                }
                Message::End {
                    length,
                    receipt: r.take(len, "receipt")?,
                }
            }
            tag::REPORT => Message::Report(Report {
                success: r.bool("success")?,
                downstream_status: r.u32("downstream_status")? as i32,
                delivered: r.u64("delivered")?,
                snapshot_guid: r.opt_u64("snapshot_guid")?,
                message: r.string("message")?,
            }),
            tag::ABORT => Message::Abort {
                reason: r.string("reason")?,
            },
            tag::REQ_TARGET_STATE => Message::Request(Request::TargetState {
                dataset: r.string("dataset")?,
            }),
            tag::REQ_ABORT_RESUME => Message::Request(Request::AbortResume {
                dataset: r.string("dataset")?,
            }),
            tag::REQ_DESTROY => {
                let dataset = r.string("dataset")?;
                let count = r.u32("snapshot_count")?;
                // Grown one by one: the count is untrusted, the body bounds it.
                let mut snapshots = Vec::new();
                for _ in 0..count {
                    snapshots.push(r.string("snapshot")?);
                }
                Message::Request(Request::DestroySnapshots { dataset, snapshots })
            }
            tag::REQ_PROMOTE => Message::Request(Request::Promote {
                dataset: r.string("dataset")?,
                snapshot: r.string("snapshot")?,
            }),
            tag::REQ_LIST_TREE => Message::Request(Request::ListTree {
                dataset: r.string("dataset")?,
            }),
            tag::REQ_DESTROY_COPY => Message::Request(Request::DestroyCopy {
                dataset: r.string("dataset")?,
            }),
            tag::REQ_RENAME_COPY => Message::Request(Request::RenameCopy {
                dataset: r.string("dataset")?,
                to: r.string("to")?,
            }),
            tag::RESP_TREE => {
                let count = r.u32("dataset_count")?;
                // Grown one by one: the count is untrusted, the body bounds it.
                let mut datasets = Vec::new();
                for _ in 0..count {
                    datasets.push(r.string("dataset")?);
                }
                Message::Response(Response::Tree { datasets })
            }
            tag::RESP_TARGET_STATE => {
                let dataset = r.string("dataset")?;
                let exists = r.bool("exists")?;
                let count = r.u32("snapshot_count")?;
                let mut snapshots = Vec::new();
                for _ in 0..count {
                    snapshots.push(TargetSnapshot {
                        name: r.string("snapshot")?,
                        guid: r.u64("guid")?,
                        createtxg: r.u64("createtxg")?,
                        creation: r.u64("creation")? as i64,
                    });
                }
                let resume_token = match r.bool("resume_token")? {
                    true => Some(r.string("resume_token")?),
                    false => None,
                };
                Message::Response(Response::TargetState(TargetState {
                    dataset,
                    exists,
                    snapshots,
                    resume_token,
                    written: r.u64("written")?,
                }))
            }
            tag::REQ_CHUNK_INVENTORY => Message::Request(Request::ChunkInventory {
                session: SessionId(r.u128("session")?),
            }),
            tag::RESP_CHUNK_INVENTORY => {
                let count = r.u32("hash_count")? as usize;
                if count > MAX_INVENTORY {
                    return Err(DecodeError::Invalid {
                        field: "hash_count",
                        why: "more addresses than MAX_INVENTORY",
                    });
                }
                r.need(count * 32, "hashes")?;
                let mut hashes = Vec::with_capacity(count);
                for _ in 0..count {
                    let mut h = [0u8; 32];
                    r.0.copy_to_slice(&mut h);
                    hashes.push(h);
                }
                Message::Response(Response::ChunkInventory { hashes })
            }
            tag::RESP_DONE => Message::Response(Response::Done {
                message: r.string("message")?,
            }),
            tag::RESP_FAILED => Message::Response(Response::Failed {
                code: RefuseCode::from_u8(r.u8("code")?),
                message: r.string("message")?,
            }),
            other => return Err(DecodeError::UnknownType(other)),
        };
        if r.0.has_remaining() {
            return Err(DecodeError::Trailing {
                tag: t,
                count: r.0.remaining(),
            });
        }
        Ok(msg)
    }
}

struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.0.remaining() < n {
            Err(DecodeError::Truncated { field })
        } else {
            Ok(())
        }
    }
    fn u8(&mut self, f: &'static str) -> Result<u8, DecodeError> {
        self.need(1, f)?;
        Ok(self.0.get_u8())
    }
    fn bool(&mut self, f: &'static str) -> Result<bool, DecodeError> {
        match self.u8(f)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid {
                field: f,
                why: "not 0 or 1",
            }),
        }
    }
    fn u16(&mut self, f: &'static str) -> Result<u16, DecodeError> {
        self.need(2, f)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self, f: &'static str) -> Result<u32, DecodeError> {
        self.need(4, f)?;
        Ok(self.0.get_u32())
    }
    fn u64(&mut self, f: &'static str) -> Result<u64, DecodeError> {
        self.need(8, f)?;
        Ok(self.0.get_u64())
    }
    fn u128(&mut self, f: &'static str) -> Result<u128, DecodeError> {
        self.need(16, f)?;
        Ok(self.0.get_u128())
    }
    fn opt_u64(&mut self, f: &'static str) -> Result<Option<u64>, DecodeError> {
        Ok(match self.bool(f)? {
            true => Some(self.u64(f)?),
            false => None,
        })
    }
    fn take(&mut self, n: usize, f: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, f)?;
        Ok(self.0.split_to(n))
    }
    fn string(&mut self, f: &'static str) -> Result<String, DecodeError> {
        let n = self.u16(f)? as usize;
        if n > MAX_STRING_LEN {
            return Err(DecodeError::Invalid {
                field: f,
                why: "string longer than 4096 bytes",
            });
        }
        let b = self.take(n, f)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid {
            field: f,
            why: "not UTF-8",
        })
    }
    fn snapshot(&mut self, f: &'static str) -> Result<Snapshot, DecodeError> {
        Ok(Snapshot {
            name: self.string(f)?,
            guid: self.u64(f)?,
        })
    }
}

/// Splits a byte stream into messages: feed it whatever the QUIC stream
/// yields, take whole messages out.
#[derive(Default)]
pub struct MessageReader {
    buf: BytesMut,
}

impl MessageReader {
    /// An empty reader.
    pub fn new() -> MessageReader {
        MessageReader::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held that do not yet form a whole message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLong { len: len as u64 });
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len).freeze();
        Message::decode(body).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                min_version: 1,
                max_version: 3,
                sender_key: [7; 32],
            },
            Message::Offer(Offer {
                session: SessionId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
                resuming: true,
                dataset: "backup/fs".into(),
                from: Some(Snapshot {
                    name: "tank/fs@a".into(),
                    guid: 1,
                }),
                to: Snapshot {
                    name: "tank/fs@b".into(),
                    guid: 2,
                },
                flags: 0,
                size_estimate: Some(1 << 40),
            }),
            Message::Answer(Answer::Accept { version: 1 }),
            Message::Answer(Answer::Resume {
                version: 1,
                offset: 12345,
            }),
            Message::Answer(Answer::ResumeToken {
                version: 1,
                token: "1-abc".into(),
            }),
            Message::Refuse {
                code: RefuseCode::Busy,
                reason: "busy".into(),
            },
            Message::Data(DataFrame::raw(10, Bytes::from_static(b"hello"))),
            Message::Data(DataFrame {
                start: 0,
                end: 1 << 20,
                encoding: FrameEncoding::Pack,
                payload: Bytes::from_static(b"zz"),
            }),
            Message::Ack { offset: 99 },
            Message::End {
                length: 5,
                receipt: Bytes::from_static(b"r"),
            },
            Message::Report(Report {
                success: true,
                downstream_status: -1,
                delivered: 5,
                snapshot_guid: Some(2),
                message: "ok".into(),
            }),
            Message::Abort {
                reason: "nope".into(),
            },
            Message::Request(Request::TargetState {
                dataset: "backup/fs".into(),
            }),
            Message::Request(Request::AbortResume {
                dataset: "backup/fs".into(),
            }),
            Message::Request(Request::DestroySnapshots {
                dataset: "backup/fs".into(),
                snapshots: vec!["a".into(), "b".into()],
            }),
            Message::Request(Request::DestroySnapshots {
                dataset: "backup/fs".into(),
                snapshots: vec![],
            }),
            Message::Request(Request::Promote {
                dataset: "backup/fs".into(),
                snapshot: "fjord_2026-12-03T170000Z".into(),
            }),
            Message::Response(Response::TargetState(TargetState {
                dataset: "backup/fs".into(),
                exists: true,
                snapshots: vec![
                    TargetSnapshot {
                        name: "a".into(),
                        guid: 1,
                        createtxg: 10,
                        creation: 1_700_000_000,
                    },
                    TargetSnapshot {
                        name: "b".into(),
                        guid: 2,
                        createtxg: 12,
                        creation: -1,
                    },
                ],
                resume_token: Some("1-abc-def".into()),
                written: 4096,
            })),
            Message::Response(Response::TargetState(TargetState::default())),
            Message::Request(Request::ListTree {
                dataset: "backup/oslo/home".into(),
            }),
            Message::Request(Request::DestroyCopy {
                dataset: "backup/oslo/home/old".into(),
            }),
            Message::Request(Request::RenameCopy {
                dataset: "backup/oslo/home/a".into(),
                to: "backup/oslo/home/b".into(),
            }),
            Message::Response(Response::Tree {
                datasets: vec!["backup/oslo/home".into(), "backup/oslo/home/a".into()],
            }),
            Message::Response(Response::Tree { datasets: vec![] }),
            Message::Request(Request::ChunkInventory {
                session: SessionId(u128::MAX - 3),
            }),
            Message::Response(Response::ChunkInventory {
                hashes: vec![[0xa; 32], [0xb; 32]],
            }),
            Message::Response(Response::ChunkInventory { hashes: vec![] }),
            Message::Response(Response::Done {
                message: "ok".into(),
            }),
            Message::Response(Response::Failed {
                code: RefuseCode::BadDataset,
                message: "outside prefix".into(),
            }),
        ]
    }

    #[test]
    fn every_message_round_trips_in_any_chunking() {
        let mut wire = BytesMut::new();
        for m in samples() {
            m.encode(&mut wire);
        }
        for step in [1, 3, 7, 64, wire.len()] {
            let mut r = MessageReader::new();
            let mut out = Vec::new();
            for chunk in wire.chunks(step) {
                r.feed(chunk);
                while let Some(m) = r.next_message().expect("valid") {
                    out.push(m);
                }
            }
            assert_eq!(out, samples());
            assert_eq!(r.buffered(), 0);
        }
    }

    #[test]
    fn refuse_codes_keep_their_wire_values_and_unknown_ones_stay_readable() {
        let known = [
            (RefuseCode::UnsupportedVersion, 1),
            (RefuseCode::UnknownSession, 2),
            (RefuseCode::Busy, 3),
            (RefuseCode::BadDataset, 4),
            (RefuseCode::SinkFailed, 5),
            (RefuseCode::Policy, 6),
            (RefuseCode::Exists, 7),
            (RefuseCode::Promoted, 8),
            (RefuseCode::Other, 255),
        ];
        for (code, wire) in known {
            assert_eq!(code.to_u8(), wire);
            let m = Message::Refuse {
                code,
                reason: "why".into(),
            };
            assert_eq!(Message::decode(m.to_bytes().slice(4..)), Ok(m));
        }
        // A code from a newer receiver decodes, and says what it is.
        let m = Message::Refuse {
            code: RefuseCode::Unknown(42),
            reason: "a newer reason".into(),
        };
        match Message::decode(m.to_bytes().slice(4..)) {
            Ok(Message::Refuse { code, reason }) => {
                assert_eq!(code, RefuseCode::Unknown(42));
                assert_eq!(reason, "a newer reason");
                let shown = crate::SessionError::Refused { code, reason }.to_string();
                assert_eq!(
                    shown,
                    "refused by the receiver (unknown refusal code 42, from a newer fjord-recv; see the reason): a newer reason"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for m in samples() {
            let b = m.to_bytes();
            for cut in 0..b.len() - 4 {
                assert!(
                    Message::decode(b.slice(4..4 + cut)).is_err(),
                    "{m:?} cut {cut}"
                );
            }
            let mut extra = BytesMut::from(&b[4..]);
            extra.put_u8(0);
            assert!(matches!(
                Message::decode(extra.freeze()),
                Err(DecodeError::Trailing { .. })
            ));
        }
    }

    #[test]
    fn a_data_header_and_its_payload_are_the_encoded_message() {
        for f in [
            DataFrame::raw(7, Bytes::from_static(b"payload bytes")),
            DataFrame::raw(0, Bytes::new()),
            DataFrame {
                start: 1 << 40,
                end: (1 << 40) + 3,
                encoding: FrameEncoding::Pack,
                payload: Bytes::from_static(b"pk"),
            },
        ] {
            let mut split = f.encode_header().to_vec();
            split.extend_from_slice(&f.payload);
            assert_eq!(split, Message::Data(f).to_bytes().to_vec());
        }
    }

    #[test]
    fn an_untrusted_count_cannot_outrun_the_body() {
        let mut out = BytesMut::new();
        out.put_u8(tag::REQ_DESTROY);
        put_str(&mut out, "backup/fs");
        out.put_u32(u32::MAX);
        put_str(&mut out, "a");
        assert_eq!(
            Message::decode(out.freeze()),
            Err(DecodeError::Truncated { field: "snapshot" })
        );
    }

    #[test]
    fn oversized_frames_are_refused_before_buffering() {
        let mut r = MessageReader::new();
        r.feed(&u32::MAX.to_be_bytes());
        assert!(matches!(r.next_message(), Err(DecodeError::TooLong { .. })));
    }

    #[test]
    fn raw_frames_must_cover_their_payload() {
        let mut m = DataFrame::raw(0, Bytes::from_static(b"abc"));
        m.end = 5;
        let b = Message::Data(m).to_bytes();
        assert!(Message::decode(b.slice(4..)).is_err());
    }

    #[test]
    fn long_strings_are_clipped_on_a_char_boundary() {
        let s = "é".repeat(MAX_STRING_LEN);
        let b = Message::Abort { reason: s }.to_bytes();
        match Message::decode(b.slice(4..)) {
            Ok(Message::Abort { reason }) => assert!(reason.len() <= MAX_STRING_LEN),
            other => panic!("{other:?}"),
        }
    }
}
