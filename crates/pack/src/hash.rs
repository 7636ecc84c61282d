//! Content addresses: the BLAKE3 digest of a record payload.

use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// The BLAKE3 digest of one payload (a "chunk"): its address in the dedup
/// window and in the receiver's chunk cache.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    /// The address of `data`.
    pub fn of(data: &[u8]) -> ChunkHash {
        ChunkHash(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex, as used for cache file names.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<ChunkHash> {
        blake3::Hash::from_hex(s)
            .ok()
            .map(|h| ChunkHash(*h.as_bytes()))
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to tell chunks apart in a message.
        f.write_str(&self.to_hex()[..16])
    }
}

/// A map hasher for [`ChunkHash`] keys: they are already uniformly random,
/// so their first eight bytes are a perfect hash and SipHash is wasted work.
#[derive(Default)]
pub struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length then its bytes; keep the first
        // eight content bytes, mixed with whatever came before.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
            if bytes.len() >= 8 {
                break;
            }
        }
    }
}

/// `HashMap` state for [`ChunkHash`] keys.
pub type BuildPrefixHasher = BuildHasherDefault<PrefixHasher>;
