//! The dedup window: which chunks the decoder holds in memory.
//!
//! Both sides run the same deterministic LRU over the same sequence of
//! operations, so the encoder knows exactly which chunks the decoder can
//! resolve without asking it: the encoder keeps hashes only (`V = ()`), the
//! decoder keeps the bytes. The window's capacity is sent in the pack's
//! start frame.

use crate::hash::{BuildPrefixHasher, ChunkHash};
use std::collections::{BTreeMap, HashMap};

/// What one entry costs against the capacity beyond its bytes: keeps the
/// number of entries (and so the encoder's hash-only model) bounded even
/// for tiny chunks.
pub const ENTRY_OVERHEAD: u64 = 256;

/// Default window capacity: 64 MiB of chunk bytes on the decoder.
pub const DEFAULT_WINDOW_BYTES: u64 = 64 << 20;

/// Largest window a decoder accepts (keeps its memory bounded).
pub const MAX_WINDOW_BYTES: u64 = 128 << 20;

struct Slot<V> {
    tick: u64,
    cost: u64,
    value: V,
}

/// A least-recently-used set of chunks bounded in bytes.
pub struct ChunkWindow<V> {
    capacity: u64,
    used: u64,
    tick: u64,
    entries: HashMap<ChunkHash, Slot<V>, BuildPrefixHasher>,
    by_age: BTreeMap<u64, ChunkHash>,
}

impl<V> ChunkWindow<V> {
    /// An empty window holding at most `capacity` bytes (entry overhead
    /// included).
    pub fn new(capacity: u64) -> ChunkWindow<V> {
        ChunkWindow {
            capacity,
            used: 0,
            tick: 0,
            entries: HashMap::default(),
            by_age: BTreeMap::new(),
        }
    }

    /// Whether `hash` is held (does not count as a use).
    pub fn contains(&self, hash: &ChunkHash) -> bool {
        self.entries.contains_key(hash)
    }

    /// Bytes accounted (chunk bytes plus overhead).
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Number of chunks held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Marks `hash` as just used and returns its value, if held.
    pub fn touch(&mut self, hash: &ChunkHash) -> Option<&V> {
        self.tick += 1;
        let tick = self.tick;
        let slot = self.entries.get_mut(hash)?;
        self.by_age.remove(&slot.tick);
        slot.tick = tick;
        self.by_age.insert(tick, *hash);
        Some(&slot.value)
    }

    /// Adds a chunk of `len` bytes (or, if held, marks it used), then
    /// evicts the least recently used until within capacity. A chunk larger
    /// than the whole window is not added.
    pub fn insert(&mut self, hash: ChunkHash, len: usize, value: V) {
        if self.touch(&hash).is_some() {
            return;
        }
        let cost = len as u64 + ENTRY_OVERHEAD;
        if cost > self.capacity {
            return;
        }
        while self.used + cost > self.capacity {
            let Some((_, old)) = self.by_age.pop_first() else {
                break;
            };
            if let Some(slot) = self.entries.remove(&old) {
                self.used -= slot.cost;
            }
        }
        self.used += cost;
        self.by_age.insert(self.tick, hash);
        self.entries.insert(
            hash,
            Slot {
                tick: self.tick,
                cost,
                value,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> ChunkHash {
        ChunkHash::of(&[n])
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut w = ChunkWindow::<()>::new(3 * (100 + ENTRY_OVERHEAD));
        w.insert(h(1), 100, ());
        w.insert(h(2), 100, ());
        w.insert(h(3), 100, ());
        assert!(w.touch(&h(1)).is_some());
        w.insert(h(4), 100, ());
        assert!(w.contains(&h(1)) && !w.contains(&h(2)));
        assert!(w.contains(&h(3)) && w.contains(&h(4)));
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn a_chunk_larger_than_the_window_is_not_kept() {
        let mut w = ChunkWindow::<()>::new(1000);
        w.insert(h(1), 10, ());
        w.insert(h(2), 5000, ());
        assert!(w.contains(&h(1)) && !w.contains(&h(2)));
    }
}
