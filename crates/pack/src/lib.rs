//! # fjord-pack
//!
//! The data path between the send-stream codec and the transport: a ZFS
//! send stream becomes a sequence of *frames* and back, byte for byte.
//!
//! - Frames are cut on record boundaries, about 1 MiB each
//!   ([`encoder::PackOptions::frame_target`]).
//! - WRITE, SPILL and WRITE_EMBEDDED payloads are content-addressed with
//!   BLAKE3: a payload the receiver already holds (in the dedup window both
//!   sides keep, or in its persistent [`cache::DiskChunkCache`]) travels as
//!   a 37-byte reference.
//! - zstd compresses what is worth it; blocks ZFS already compressed or
//!   encrypted (`zfs send -c`, `-w`) and payloads that fail a cheap
//!   entropy probe travel as they are.
//! - The decoder checks each frame's BLAKE3, rebuilds the stream, verifies
//!   every record with [`fjord_stream::Decoder`] and releases only bytes a
//!   matched checksum covers.
//! - Both sides compute the BLAKE3 of the whole stream: the receipt.
//!
//! The core ([`encoder`], [`decoder`], [`format`], [`window`]) is sans-IO;
//! [`pipeline`] (threads, `Read`/`Write`) and [`cache`] (files) are the
//! edges. The format is specified in `docs/frame-format.md`.
#![warn(missing_docs)]

pub mod cache;
pub mod decoder;
pub mod encoder;
pub mod error;
pub mod format;
pub mod hash;
pub mod holdings;
pub mod pipeline;
pub mod probe;
pub mod window;

pub use cache::{DiskChunkCache, LeaseId};
pub use decoder::{PackDecoder, UnpackOptions, UnpackStats};
pub use encoder::{PackOptions, PackStats};
pub use error::{CacheError, PackError, UnpackError, UnpackFailed};
pub use format::Receipt;
pub use hash::ChunkHash;
pub use holdings::{ChunkStore, Inventory, NoCache, ReceiverHoldings};
pub use pipeline::{
    pack, pack_frames, unpack, FrameOutput, PackSummary, UnpackSummary, WriteFrames,
};
