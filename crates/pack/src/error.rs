//! What can go wrong packing and unpacking, said so that an operator can act.

use crate::hash::ChunkHash;
use fjord_stream::StreamError;
use thiserror::Error;

/// A failure of the chunk cache or of the receiver answering for it.
#[derive(Debug, Error)]
pub enum CacheError {
    /// The cache directory could not be read or written.
    #[error("chunk cache {path}: {source}; check the directory's permissions and free space, or run without the cache")]
    Io {
        /// The file or directory concerned.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The receiver could not answer which chunks it holds.
    #[error("asking the receiver which chunks it holds failed: {0}")]
    Holdings(String),
}

/// Why a pack could not be decoded. Every frame-level variant names the
/// frame (index from 0) and its byte offset in the pack; nothing after the
/// last verified record has been released when one is returned.
#[derive(Debug, Error)]
pub enum UnpackError {
    /// The bytes at a frame boundary are not a frame.
    #[error("frame #{frame} at pack byte {offset}: no frame magic (found {found:02x?}); this is not a fjord pack or it is damaged")]
    BadMagic {
        /// Frame index.
        frame: u64,
        /// Pack offset.
        offset: u64,
        /// The four bytes found.
        found: [u8; 4],
    },
    /// Written by a newer fjord.
    #[error("frame #{frame} at pack byte {offset}: frame format version {version}, this fjord reads version {}; upgrade fjord on this side", crate::format::FORMAT_VERSION)]
    UnsupportedVersion {
        /// Frame index.
        frame: u64,
        /// Pack offset.
        offset: u64,
        /// Version found.
        version: u8,
    },
    /// A frame fails its BLAKE3 check (header and packed section, or a
    /// stored chunk): damaged in transit or on disk.
    #[error("frame #{frame} at pack byte {offset} fails its BLAKE3 check ({what}): the pack is damaged; resend it")]
    Corrupt {
        /// Frame index.
        frame: u64,
        /// Pack offset.
        offset: u64,
        /// Which part failed.
        what: String,
    },
    /// A frame is well-sealed but its contents break the format.
    #[error("frame #{frame} at pack byte {offset} is malformed: {reason}")]
    Malformed {
        /// Frame index.
        frame: u64,
        /// Pack offset.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A reference to a chunk the decoder does not hold.
    #[error("frame #{frame} at pack byte {offset} refers to chunk {hash} ({len} bytes) that this receiver does not hold: the chunk cache was cleared or is not the one the sender was told about; resend without the cache")]
    MissingChunk {
        /// Frame index.
        frame: u64,
        /// Pack offset.
        offset: u64,
        /// The chunk.
        hash: ChunkHash,
        /// Its length.
        len: u32,
    },
    /// The rebuilt stream fails send-stream verification (a record's
    /// Fletcher-4 trailer, the END checksum, the grammar).
    #[error("frame #{frame} at pack byte {offset}: the rebuilt send stream is invalid: {source}")]
    Stream {
        /// Frame index.
        frame: u64,
        /// Pack offset.
        offset: u64,
        /// The stream error (names the record).
        source: StreamError,
    },
    /// The pack stops inside a frame.
    #[error("the pack is truncated: it stops inside frame #{frame} at pack byte {offset} ({have} of {need} bytes present); copy or resend it whole")]
    Truncated {
        /// Frame index.
        frame: u64,
        /// Pack offset of the frame.
        offset: u64,
        /// Bytes of the frame present.
        have: u64,
        /// Bytes the frame needs (header length while the header is incomplete).
        need: u64,
    },
    /// The pack stops on a frame boundary before its END frame.
    #[error("the pack is truncated: it stops after {frames} frames ({offset} bytes) without its END frame; copy or resend it whole")]
    MissingEnd {
        /// Frames read.
        frames: u64,
        /// Pack bytes read.
        offset: u64,
    },
    /// Bytes follow the END frame.
    #[error("{len} bytes follow the END frame at pack byte {offset}: the file holds more than one pack or is damaged")]
    TrailingData {
        /// Where they start.
        offset: u64,
        /// How many.
        len: u64,
    },
    /// The receipt does not match the stream rebuilt.
    #[error("frame #{frame} at pack byte {offset}: the receipt does not match: sender had {expected_len} bytes with BLAKE3 {expected}, rebuilt {found_len} bytes with BLAKE3 {found}")]
    ReceiptMismatch {
        /// Frame index (the END frame).
        frame: u64,
        /// Pack offset.
        offset: u64,
        /// The sender's stream length.
        expected_len: u64,
        /// The sender's digest (hex).
        expected: String,
        /// Bytes rebuilt.
        found_len: u64,
        /// Digest of the bytes rebuilt (hex).
        found: String,
    },
    /// Too many bytes waiting for a checksum to cover them.
    #[error("frame #{frame} at pack byte {offset}: more than {limit} bytes of the stream are not covered by any checksum yet; the stream cannot be verified with bounded memory")]
    Unverifiable {
        /// Frame index.
        frame: u64,
        /// Pack offset.
        offset: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// The pack could not be read.
    #[error("reading the pack failed after {at} bytes: {source}")]
    Read {
        /// Pack bytes read before the failure.
        at: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The rebuilt stream could not be written.
    #[error("writing the stream failed after {at} bytes: {source}")]
    Write {
        /// Stream bytes written before the failure.
        at: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The chunk cache failed.
    #[error("frame #{frame} at pack byte {offset}: {source}")]
    Cache {
        /// Frame index.
        frame: u64,
        /// Pack offset.
        offset: u64,
        /// The cache error.
        source: CacheError,
    },
}

/// Why packing stopped.
#[derive(Debug, Error)]
pub enum PackError {
    /// The input could not be read.
    #[error("reading the stream failed after {at} bytes: {source}")]
    Read {
        /// Bytes read before the failure.
        at: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The input is not a valid send stream (packing verifies it first).
    #[error("the input is not a valid send stream: {0}")]
    Stream(#[from] StreamError),
    /// The pack could not be written.
    #[error("writing the pack failed after {at} bytes: {source}")]
    Write {
        /// Pack bytes written before the failure.
        at: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Asking what the receiver holds failed.
    #[error(transparent)]
    Holdings(#[from] CacheError),
    /// A setting is out of range.
    #[error("invalid pack option: {0}")]
    Options(String),
    /// zstd refused to compress (out of memory, bad level).
    #[error("zstd compression failed: {0}")]
    Compress(String),
}

/// An unpack that stopped, with how much verified stream it had written.
#[derive(Debug, Error)]
#[error("{source}; {written} verified stream bytes were written, nothing after them")]
pub struct UnpackFailed {
    /// Verified stream bytes written before the failure.
    pub written: u64,
    /// Why it stopped.
    pub source: UnpackError,
}
