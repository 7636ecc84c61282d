//! What the receiver holds: the two questions the dedup path asks across
//! the wire, as traits so that a file, a local cache or (later) the QUIC
//! session can answer them.

use crate::error::CacheError;
use crate::hash::{BuildPrefixHasher, ChunkHash};
use bytes::Bytes;
use std::collections::HashSet;

/// The sender's question: which of these chunks does the receiver already
/// hold in its persistent cache? Asked once per frame with every chunk of
/// the frame the dedup window does not cover, so a remote implementation
/// pays one round trip per frame (or answers from a filter the receiver
/// sent earlier).
///
/// A "yes" is a promise: the receiver must be able to produce that chunk
/// when the frame arrives (the disk cache pins chunks it said yes to until
/// it is dropped). A false "no" only costs bandwidth.
pub trait ReceiverHoldings {
    /// One answer per hash, in order.
    fn holds(&mut self, hashes: &[ChunkHash]) -> Result<Vec<bool>, CacheError>;
}

/// The receiver's side: where references to chunks outside the dedup
/// window are resolved from, and where new chunks are kept for later
/// transfers.
pub trait ChunkStore {
    /// The chunk with this hash, if held. Implementations return only bytes
    /// whose BLAKE3 is `hash` and whose length is `len`.
    fn get(&mut self, hash: &ChunkHash, len: usize) -> Result<Option<Bytes>, CacheError>;

    /// Keeps a chunk whose hash the caller has computed. May decline.
    fn put(&mut self, hash: &ChunkHash, data: &[u8]) -> Result<(), CacheError>;
}

/// A receiver with no persistent cache: holds nothing, keeps nothing. File
/// mode (`fjord-send pack`) uses it, as nobody answers for the reader.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCache;

impl ReceiverHoldings for NoCache {
    fn holds(&mut self, hashes: &[ChunkHash]) -> Result<Vec<bool>, CacheError> {
        Ok(vec![false; hashes.len()])
    }
}

impl ChunkStore for NoCache {
    fn get(&mut self, _: &ChunkHash, _: usize) -> Result<Option<Bytes>, CacheError> {
        Ok(None)
    }

    fn put(&mut self, _: &ChunkHash, _: &[u8]) -> Result<(), CacheError> {
        Ok(())
    }
}

/// The sender's copy of a receiver's inventory
/// ([`DiskChunkCache::inventory`](crate::cache::DiskChunkCache::inventory)):
/// the chunks it promised to hold for this transfer. Answers locally, so
/// asking costs no round trip.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    held: HashSet<ChunkHash, BuildPrefixHasher>,
}

impl Inventory {
    /// The inventory of these chunks.
    pub fn new(hashes: impl IntoIterator<Item = ChunkHash>) -> Inventory {
        Inventory {
            held: hashes.into_iter().collect(),
        }
    }

    /// Number of chunks promised.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is promised.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

impl ReceiverHoldings for Inventory {
    fn holds(&mut self, hashes: &[ChunkHash]) -> Result<Vec<bool>, CacheError> {
        Ok(hashes.iter().map(|h| self.held.contains(h)).collect())
    }
}
