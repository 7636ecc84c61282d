//! The receiver's persistent chunk caches, for dedup across transfers.
//!
//! Before a packed transfer the sender asks for an inventory
//! ([`Request::ChunkInventory`](crate::message::Request::ChunkInventory)),
//! naming the session it is about to offer. The receiver answers with its
//! most recently used chunks, up to half the cache's capacity. It pins
//! them under a lease named by that session. The sender sends a reference
//! instead of the bytes for every payload in the inventory. The transfer's
//! decoder resolves those references from the cache and keeps every new
//! chunk. The lease ends with the transfer's sink, or lapses if no
//! transfer claims it in time.
//!
//! Half the capacity is promised so that the other half can take the
//! transfer's new chunks without evicting a promise.
//!
//! There is one cache per sender key, in a subdirectory named by the
//! key's hex. A sender cannot learn what another sender's data contain
//! by asking, nor reference it.

use crate::identity::PublicKey;
use crate::message::{SessionId, MAX_INVENTORY};
use bytes::Bytes;
use fjord_pack::{CacheError, ChunkHash, ChunkStore, DiskChunkCache, LeaseId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where and how big: `fjord-recv serve --chunk-cache DIR
/// --chunk-cache-size SIZE`.
#[derive(Clone, Debug)]
pub struct ChunkCacheOptions {
    /// Root directory; each sender key gets a subdirectory.
    pub dir: PathBuf,
    /// Most bytes of chunks kept per sender key.
    pub capacity: u64,
}

type SharedCache = Arc<Mutex<DiskChunkCache>>;

fn lock(cache: &SharedCache) -> MutexGuard<'_, DiskChunkCache> {
    // A panic while holding the lock leaves a consistent cache: every
    // method updates its maps before or after its file operation.
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

/// The caches of every sender key, opened on first use.
pub struct ChunkCaches {
    opts: ChunkCacheOptions,
    /// How long an inventory's promise waits for its transfer.
    lease_ttl: Duration,
    open: Mutex<HashMap<[u8; 32], SharedCache>>,
}

impl ChunkCaches {
    /// Caches under `opts.dir`; an inventory not taken up by a transfer
    /// within `lease_ttl` is withdrawn.
    pub fn new(opts: ChunkCacheOptions, lease_ttl: Duration) -> ChunkCaches {
        ChunkCaches {
            opts,
            lease_ttl,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn for_peer(&self, peer: &PublicKey) -> Result<SharedCache, CacheError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = open.get(&peer.0) {
            return Ok(c.clone());
        }
        let hex: String = peer.0.iter().map(|b| format!("{b:02x}")).collect();
        let cache = DiskChunkCache::open(&self.opts.dir.join(hex), self.opts.capacity)?;
        let cache = Arc::new(Mutex::new(cache));
        open.insert(peer.0, cache.clone());
        Ok(cache)
    }

    /// The chunks `peer` may reference in transfer `session` without
    /// sending them, pinned until the transfer ends.
    pub fn inventory(
        &self,
        peer: &PublicKey,
        session: SessionId,
    ) -> Result<Vec<ChunkHash>, CacheError> {
        let cache = self.for_peer(peer)?;
        let mut cache = lock(&cache);
        let now = Instant::now();
        Ok(cache.inventory(
            session.0 as LeaseId,
            self.opts.capacity / 2,
            MAX_INVENTORY,
            now + self.lease_ttl,
            now,
        ))
    }

    /// The store of transfer `session` from `peer`: resolves references
    /// from the cache, keeps new chunks, and holds the session's lease (if
    /// it asked for an inventory) until dropped.
    pub fn store_for(
        &self,
        peer: &PublicKey,
        session: SessionId,
    ) -> Result<LeasedStore, CacheError> {
        let cache = self.for_peer(peer)?;
        let claimed = lock(&cache).claim(session.0);
        if !claimed {
            tracing::debug!(%session, "no chunk inventory was given for this transfer");
        }
        Ok(LeasedStore {
            cache,
            lease: claimed.then_some(session.0),
        })
    }
}

/// One transfer's view of its sender's chunk cache.
pub struct LeasedStore {
    cache: SharedCache,
    lease: Option<LeaseId>,
}

impl ChunkStore for LeasedStore {
    fn get(&mut self, hash: &ChunkHash, len: usize) -> Result<Option<Bytes>, CacheError> {
        lock(&self.cache).get(hash, len)
    }

    fn put(&mut self, hash: &ChunkHash, data: &[u8]) -> Result<(), CacheError> {
        lock(&self.cache).put(hash, data)
    }
}

impl Drop for LeasedStore {
    fn drop(&mut self) {
        if let Some(lease) = self.lease {
            lock(&self.cache).release(lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sender_key_has_its_own_cache_and_a_lease_ends_with_its_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let caches = ChunkCaches::new(
            ChunkCacheOptions {
                dir: dir.path().to_path_buf(),
                capacity: 1 << 20,
            },
            Duration::from_secs(60),
        );
        let alice = PublicKey([1; 32]);
        let bob = PublicKey([2; 32]);
        let data = vec![7u8; 4096];
        let hash = ChunkHash::of(&data);
        {
            let mut store = caches.store_for(&alice, SessionId(1)).expect("store");
            store.put(&hash, &data).expect("put");
        }
        assert_eq!(
            caches.inventory(&alice, SessionId(2)).expect("inv"),
            vec![hash]
        );
        assert!(caches
            .inventory(&bob, SessionId(3))
            .expect("inv")
            .is_empty());
        let mut store = caches.store_for(&alice, SessionId(2)).expect("store");
        assert_eq!(
            store.get(&hash, 4096).expect("get").as_deref(),
            Some(&data[..])
        );
        let cache = caches.for_peer(&alice).expect("open");
        assert_eq!(lock(&cache).pinned(), 4096);
        drop(store);
        assert_eq!(lock(&cache).pinned(), 0, "the lease ended with the store");
    }
}
