//! The receiver's persistent chunk caches, for dedup across transfers.
//!
//! Before a packed transfer the sender asks for an inventory
//! ([`Request::ChunkInventory`](fjord_proto::message::Request::ChunkInventory)),
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
//!
//! A sender key may have a bounded number of inventories promised and
//! not yet claimed by a transfer ([`ChunkCaches::with_lease_limit`]):
//! asking for one more withdraws its oldest unclaimed one. Claimed leases
//! are bounded by the sessions the key may hold.

use bytes::Bytes;
use fjord_pack::{CacheError, ChunkHash, ChunkStore, DiskChunkCache, LeaseId};
use fjord_proto::admission::ServerCounters;
use fjord_proto::message::{SessionId, MAX_INVENTORY};
use fjord_proto::PublicKey;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Each sender key's unclaimed inventories and when they lapse, oldest
/// first.
type Unclaimed = HashMap<[u8; 32], VecDeque<(SessionId, Instant)>>;

fn lock(cache: &SharedCache) -> MutexGuard<'_, DiskChunkCache> {
    // A panic while holding the lock leaves a consistent cache: every
    // method updates its maps before or after its file operation.
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the chunk caches hold and did since the start, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkCacheStats {
    /// Bytes of chunks kept, over the caches opened since the start.
    pub bytes: u64,
    /// Chunks kept, over the same caches.
    pub chunks: u64,
    /// References resolved from a cache (chunks not sent again).
    pub hits: u64,
    /// Their bytes.
    pub hit_bytes: u64,
    /// Chunks sent in full and stored (the misses).
    pub stored: u64,
    /// Their bytes.
    pub stored_bytes: u64,
}

/// Hits and stores since the start, shared by every transfer's store.
#[derive(Debug, Default)]
struct Tally {
    hits: AtomicU64,
    hit_bytes: AtomicU64,
    stored: AtomicU64,
    stored_bytes: AtomicU64,
}

/// The caches of every sender key, opened on first use.
pub struct ChunkCaches {
    tally: Arc<Tally>,
    opts: ChunkCacheOptions,
    /// How long an inventory's promise waits for its transfer.
    lease_ttl: Duration,
    open: Mutex<HashMap<[u8; 32], SharedCache>>,
    /// Most unclaimed inventories per sender key (0: no limit).
    max_unclaimed: usize,
    /// Each key's unclaimed inventories and when they lapse, oldest first.
    unclaimed: Mutex<Unclaimed>,
    counters: Option<Arc<ServerCounters>>,
}

impl ChunkCaches {
    /// Caches under `opts.dir`; an inventory not taken up by a transfer
    /// within `lease_ttl` is withdrawn.
    pub fn new(opts: ChunkCacheOptions, lease_ttl: Duration) -> ChunkCaches {
        ChunkCaches {
            tally: Arc::default(),
            opts,
            lease_ttl,
            open: Mutex::new(HashMap::new()),
            max_unclaimed: 0,
            unclaimed: Mutex::new(HashMap::new()),
            counters: None,
        }
    }

    /// These caches, with at most `per_client` unclaimed inventories per
    /// sender key (0: no limit): one more withdraws the key's oldest, and
    /// counts it in `counters.leases_displaced`.
    pub fn with_lease_limit(
        mut self,
        per_client: usize,
        counters: Arc<ServerCounters>,
    ) -> ChunkCaches {
        self.max_unclaimed = per_client;
        self.counters = Some(counters);
        self
    }

    /// The caches' size and their hits and stores since the start.
    pub fn stats(&self) -> ChunkCacheStats {
        let open: Vec<SharedCache> = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let (mut bytes, mut chunks) = (0, 0);
        for cache in &open {
            let c = lock(cache);
            bytes += c.used();
            chunks += c.len() as u64;
        }
        let t = &self.tally;
        ChunkCacheStats {
            bytes,
            chunks,
            hits: t.hits.load(Ordering::Relaxed),
            hit_bytes: t.hit_bytes.load(Ordering::Relaxed),
            stored: t.stored.load(Ordering::Relaxed),
            stored_bytes: t.stored_bytes.load(Ordering::Relaxed),
        }
    }

    fn unclaimed(&self) -> MutexGuard<'_, Unclaimed> {
        self.unclaimed.lock().unwrap_or_else(|p| p.into_inner())
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
        // Lock order: the cache, then the unclaimed lists.
        let mut cache = lock(&cache);
        let now = Instant::now();
        let expires = now + self.lease_ttl;
        let displaced = {
            let mut unclaimed = self.unclaimed();
            let queue = unclaimed.entry(peer.0).or_default();
            // Lapsed leases are gone from the cache already.
            queue.retain(|(s, until)| *s != session && *until > now);
            queue.push_back((session, expires));
            let mut displaced = Vec::new();
            while self.max_unclaimed != 0 && queue.len() > self.max_unclaimed {
                if let Some((old, _)) = queue.pop_front() {
                    displaced.push(old);
                }
            }
            displaced
        };
        for old in displaced {
            // A lease that lapsed or was claimed meanwhile is not there.
            cache.release(old.0 as LeaseId);
            tracing::warn!(sender = %peer, lease = %old, "chunk inventory withdrawn: this sender key asked for more than its limit of unclaimed inventories");
            if let Some(c) = &self.counters {
                ServerCounters::bump(&c.leases_displaced);
            }
        }
        Ok(cache.inventory(
            session.0 as LeaseId,
            self.opts.capacity / 2,
            MAX_INVENTORY,
            expires,
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
        let claimed = {
            let mut guard = lock(&cache);
            let mut unclaimed = self.unclaimed();
            if let Some(queue) = unclaimed.get_mut(&peer.0) {
                queue.retain(|(s, _)| *s != session);
                if queue.is_empty() {
                    unclaimed.remove(&peer.0);
                }
            }
            guard.claim(session.0)
        };
        if !claimed {
            tracing::debug!(%session, "no chunk inventory was given for this transfer");
        }
        Ok(LeasedStore {
            cache,
            lease: claimed.then_some(session.0),
            tally: self.tally.clone(),
        })
    }
}

/// One transfer's view of its sender's chunk cache.
pub struct LeasedStore {
    cache: SharedCache,
    lease: Option<LeaseId>,
    tally: Arc<Tally>,
}

impl ChunkStore for LeasedStore {
    fn get(&mut self, hash: &ChunkHash, len: usize) -> Result<Option<Bytes>, CacheError> {
        let found = lock(&self.cache).get(hash, len)?;
        if let Some(b) = &found {
            self.tally.hits.fetch_add(1, Ordering::Relaxed);
            self.tally
                .hit_bytes
                .fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        Ok(found)
    }

    fn put(&mut self, hash: &ChunkHash, data: &[u8]) -> Result<(), CacheError> {
        lock(&self.cache).put(hash, data)?;
        self.tally.stored.fetch_add(1, Ordering::Relaxed);
        self.tally
            .stored_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
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
        let stats = caches.stats();
        assert_eq!((stats.stored, stats.stored_bytes), (1, 4096));
        assert_eq!((stats.hits, stats.hit_bytes), (1, 4096));
        assert_eq!((stats.chunks, stats.bytes), (1, 4096));
        drop(store);
        assert_eq!(lock(&cache).pinned(), 0, "the lease ended with the store");
    }

    #[test]
    fn a_sender_key_holds_a_bounded_number_of_unclaimed_inventories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let counters = Arc::new(ServerCounters::default());
        let caches = ChunkCaches::new(
            ChunkCacheOptions {
                dir: dir.path().to_path_buf(),
                capacity: 1 << 20,
            },
            Duration::from_secs(60),
        )
        .with_lease_limit(2, counters.clone());
        let alice = PublicKey([1; 32]);
        let bob = PublicKey([2; 32]);
        for s in 1..=3 {
            caches.inventory(&alice, SessionId(s)).expect("inv");
        }
        caches.inventory(&bob, SessionId(9)).expect("inv");
        // Asking again under the same session does not count twice.
        caches.inventory(&alice, SessionId(3)).expect("inv");
        assert_eq!(ServerCounters::get(&counters.leases_displaced), 1);
        let first = caches.store_for(&alice, SessionId(1)).expect("store");
        assert_eq!(first.lease, None, "the oldest inventory was withdrawn");
        let second = caches.store_for(&alice, SessionId(2)).expect("store");
        assert_eq!(second.lease, Some(2));
        // A claimed lease no longer counts: two more fit.
        caches.inventory(&alice, SessionId(4)).expect("inv");
        assert_eq!(ServerCounters::get(&counters.leases_displaced), 1);
        assert!(caches
            .store_for(&alice, SessionId(3))
            .expect("store")
            .lease
            .is_some());
        assert!(caches
            .store_for(&bob, SessionId(9))
            .expect("store")
            .lease
            .is_some());
    }
}
