//! The receiver's persistent chunk cache: one file per chunk, named by its
//! BLAKE3, bounded in bytes, least recently used evicted first. This is an
//! I/O edge; the dedup logic only sees it through [`ReceiverHoldings`] and
//! [`ChunkStore`].
//!
//! Recency survives restarts through file modification times (a hit
//! touches the file). A chunk the cache has promised is pinned, so a
//! sender's reference to it can always be resolved: chunks said "yes" to
//! in [`ReceiverHoldings::holds`] until the cache is dropped, chunks named
//! in an [`inventory`](DiskChunkCache::inventory) until its lease is
//! released or expires unclaimed. New chunks only evict unpinned ones,
//! and are not kept when everything is pinned.
//!
//! Chunks are the receiver's copies of a sender's data: the cache's
//! directories are created mode 0700 and its files 0600, and a cache
//! found with looser modes (an older fjord's) is tightened on open.

use crate::error::CacheError;
use crate::hash::{BuildPrefixHasher, ChunkHash};
use crate::holdings::{ChunkStore, ReceiverHoldings};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

struct Entry {
    len: u64,
    tick: u64,
    /// Promises outstanding: leases naming the chunk, plus local `holds`.
    pins: u32,
}

/// Names the promise one [`DiskChunkCache::inventory`] made (the
/// transport uses the transfer's session id).
pub type LeaseId = u128;

struct Lease {
    hashes: Vec<ChunkHash>,
    /// When an unclaimed lease lapses; `None` once a transfer claimed it.
    expires: Option<Instant>,
}

/// A directory of chunks, bounded in bytes.
pub struct DiskChunkCache {
    dir: PathBuf,
    capacity: u64,
    used: u64,
    tick: u64,
    entries: HashMap<ChunkHash, Entry, BuildPrefixHasher>,
    by_age: BTreeMap<u64, ChunkHash>,
    leases: HashMap<LeaseId, Lease>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Mode of the cache's directories: owner only.
const DIR_MODE: u32 = 0o700;
/// Mode of chunk files: owner only.
const FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parents with mode 0700.
fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(DIR_MODE);
    }
    b.create(dir)
}

/// Takes group and other access away from `path` (whose metadata is
/// `meta`), leaving at most `mode`.
fn tighten(path: &Path, meta: &fs::Metadata, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let current = meta.permissions().mode() & 0o7777;
        if current & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(current & mode))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, meta, mode);
    Ok(())
}

/// Writes a new owner-only (0600) file at `path`, replacing a leftover.
fn write_private_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(FILE_MODE);
    }
    opts.open(path)?.write_all(data)
}

impl DiskChunkCache {
    /// Opens (creating if needed) the cache in `dir`, holding at most
    /// `capacity` bytes of chunks; evicts down to it at once.
    pub fn open(dir: &Path, capacity: u64) -> Result<DiskChunkCache, CacheError> {
        create_private_dirs(dir).map_err(io_err(dir))?;
        let meta = fs::metadata(dir).map_err(io_err(dir))?;
        tighten(dir, &meta, DIR_MODE).map_err(io_err(dir))?;
        let mut found = Vec::new();
        for fan in fs::read_dir(dir).map_err(io_err(dir))? {
            let fan = fan.map_err(io_err(dir))?.path();
            let Ok(fan_meta) = fs::metadata(&fan) else {
                continue;
            };
            if !fan_meta.is_dir() {
                continue;
            }
            // Best effort below `dir`: the 0700 of `dir` already keeps
            // others out.
            if let Err(e) = tighten(&fan, &fan_meta, DIR_MODE) {
                tracing::warn!(dir = %fan.display(), error = %e, "cannot make a chunk cache directory owner-only");
            }
            for file in fs::read_dir(&fan).map_err(io_err(&fan))? {
                let path = file.map_err(io_err(&fan))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                match ChunkHash::from_hex(name) {
                    Some(hash) => {
                        let meta = fs::metadata(&path).map_err(io_err(&path))?;
                        if let Err(e) = tighten(&path, &meta, FILE_MODE) {
                            tracing::warn!(file = %path.display(), error = %e, "cannot make a cached chunk owner-only");
                        }
                        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                        found.push((mtime, hash, meta.len()));
                    }
                    // Leftovers of an interrupted write.
                    None if name.ends_with(".tmp") => {
                        let _ = fs::remove_file(&path);
                    }
                    None => {}
                }
            }
        }
        found.sort();
        let mut cache = DiskChunkCache {
            dir: dir.to_path_buf(),
            capacity,
            used: 0,
            tick: 0,
            entries: HashMap::default(),
            by_age: BTreeMap::new(),
            leases: HashMap::new(),
        };
        for (_, hash, len) in found {
            cache.track(hash, len, 0);
        }
        cache.evict_for(0);
        tracing::debug!(dir = %dir.display(), chunks = cache.entries.len(), bytes = cache.used, "chunk cache opened");
        Ok(cache)
    }

    /// Bytes of chunks held.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Number of chunks held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn path(&self, hash: &ChunkHash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Bytes of chunks pinned by a promise.
    pub fn pinned(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| e.pins > 0)
            .map(|e| e.len)
            .sum()
    }

    /// The most recently used chunks, newest first, up to `budget` bytes
    /// and `max` chunks: what a sender may reference without sending.
    /// They stay pinned under `lease` until [`release`](Self::release),
    /// or until `expires` if no transfer [`claim`](Self::claim)s the
    /// lease first. Asking again under the same lease replaces the
    /// earlier promise.
    ///
    /// The budget is the caller's policy: keeping it below the capacity
    /// leaves room for the chunks the transfer brings.
    pub fn inventory(
        &mut self,
        lease: LeaseId,
        budget: u64,
        max: usize,
        expires: Instant,
        now: Instant,
    ) -> Vec<ChunkHash> {
        self.release(lease);
        self.expire_leases(now);
        let mut hashes = Vec::new();
        let mut bytes = 0u64;
        for hash in self.by_age.values().rev() {
            if hashes.len() >= max {
                break;
            }
            let Some(e) = self.entries.get(hash) else {
                continue;
            };
            if bytes + e.len > budget {
                break;
            }
            bytes += e.len;
            hashes.push(*hash);
        }
        for hash in &hashes {
            if let Some(e) = self.entries.get_mut(hash) {
                e.pins += 1;
            }
        }
        self.leases.insert(
            lease,
            Lease {
                hashes: hashes.clone(),
                expires: Some(expires),
            },
        );
        hashes
    }

    /// A transfer took up the lease: it holds until released, whatever
    /// its expiry. False when there is no such lease (never given, or
    /// lapsed): the transfer must then not rely on any promise.
    pub fn claim(&mut self, lease: LeaseId) -> bool {
        match self.leases.get_mut(&lease) {
            Some(l) => {
                l.expires = None;
                true
            }
            None => false,
        }
    }

    /// Ends a lease: its chunks may be evicted again.
    pub fn release(&mut self, lease: LeaseId) {
        if let Some(l) = self.leases.remove(&lease) {
            for hash in l.hashes {
                if let Some(e) = self.entries.get_mut(&hash) {
                    e.pins = e.pins.saturating_sub(1);
                }
            }
        }
    }

    /// Releases unclaimed leases whose time has passed.
    pub fn expire_leases(&mut self, now: Instant) {
        let lapsed: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in lapsed {
            tracing::debug!(lease = %format_args!("{id:032x}"), "chunk lease lapsed unclaimed");
            self.release(id);
        }
    }

    fn track(&mut self, hash: ChunkHash, len: u64, pins: u32) {
        self.tick += 1;
        self.used += len;
        self.by_age.insert(self.tick, hash);
        self.entries.insert(
            hash,
            Entry {
                len,
                tick: self.tick,
                pins,
            },
        );
    }

    /// Marks a chunk used now (in memory and on disk).
    fn touch(&mut self, hash: &ChunkHash, pin: bool) -> bool {
        self.tick += 1;
        let tick = self.tick;
        let Some(e) = self.entries.get_mut(hash) else {
            return false;
        };
        self.by_age.remove(&e.tick);
        e.tick = tick;
        e.pins += pin as u32;
        self.by_age.insert(tick, *hash);
        let path = self.path(hash);
        // Recency across restarts; losing it only makes eviction less exact.
        if let Ok(f) = fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        true
    }

    fn forget(&mut self, hash: &ChunkHash) {
        if let Some(e) = self.entries.remove(hash) {
            self.by_age.remove(&e.tick);
            self.used -= e.len;
            let _ = fs::remove_file(self.path(hash));
        }
    }

    /// Evicts unpinned chunks, oldest first, until `incoming` more bytes
    /// fit. Returns whether they do.
    fn evict_for(&mut self, incoming: u64) -> bool {
        if self.used + incoming <= self.capacity {
            return true;
        }
        let victims: Vec<ChunkHash> = {
            let mut need = self.used + incoming - self.capacity;
            let mut v = Vec::new();
            for hash in self.by_age.values() {
                if need == 0 {
                    break;
                }
                if let Some(e) = self.entries.get(hash) {
                    if e.pins == 0 {
                        need = need.saturating_sub(e.len);
                        v.push(*hash);
                    }
                }
            }
            v
        };
        for hash in victims {
            self.forget(&hash);
        }
        self.used + incoming <= self.capacity
    }
}

impl ReceiverHoldings for DiskChunkCache {
    fn holds(&mut self, hashes: &[ChunkHash]) -> Result<Vec<bool>, CacheError> {
        Ok(hashes.iter().map(|h| self.touch(h, true)).collect())
    }
}

impl ChunkStore for DiskChunkCache {
    fn get(&mut self, hash: &ChunkHash, len: usize) -> Result<Option<Bytes>, CacheError> {
        if !self.entries.contains_key(hash) {
            return Ok(None);
        }
        let path = self.path(hash);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(hash);
                return Ok(None);
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        if data.len() != len || ChunkHash::of(&data) != *hash {
            tracing::warn!(path = %path.display(), "damaged chunk in the cache; removing it");
            self.forget(hash);
            return Ok(None);
        }
        self.touch(hash, false);
        Ok(Some(Bytes::from(data)))
    }

    fn put(&mut self, hash: &ChunkHash, data: &[u8]) -> Result<(), CacheError> {
        if self.touch(hash, false) {
            return Ok(());
        }
        let len = data.len() as u64;
        if len > self.capacity || !self.evict_for(len) {
            return Ok(());
        }
        let path = self.path(hash);
        if let Some(parent) = path.parent() {
            create_private_dirs(parent).map_err(io_err(parent))?;
        }
        let tmp = path.with_extension("tmp");
        write_private_file(&tmp, data).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        self.track(*hash, len, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn chunk(i: u8, len: usize) -> (ChunkHash, Vec<u8>) {
        let data = vec![i; len];
        (ChunkHash::of(&data), data)
    }

    #[test]
    fn an_inventory_names_the_newest_chunks_within_its_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cache = DiskChunkCache::open(dir.path(), 1 << 20).expect("opens");
        let chunks: Vec<_> = (0..8).map(|i| chunk(i, 1000)).collect();
        for (h, d) in &chunks {
            cache.put(h, d).expect("put");
        }
        let now = Instant::now();
        let inv = cache.inventory(1, 3500, 100, now + Duration::from_secs(60), now);
        let newest: Vec<_> = chunks.iter().rev().take(3).map(|(h, _)| *h).collect();
        assert_eq!(inv, newest);
        assert_eq!(cache.pinned(), 3000);
        let inv = cache.inventory(2, 1 << 20, 2, now + Duration::from_secs(60), now);
        assert_eq!(inv.len(), 2, "the count limit applies too");
    }

    #[test]
    fn leased_chunks_survive_eviction_until_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cache = DiskChunkCache::open(dir.path(), 4000).expect("opens");
        let old: Vec<_> = (0..2).map(|i| chunk(i, 1000)).collect();
        for (h, d) in &old {
            cache.put(h, d).expect("put");
        }
        let now = Instant::now();
        let inv = cache.inventory(7, 2000, 100, now + Duration::from_secs(60), now);
        assert_eq!(inv.len(), 2);
        assert!(cache.claim(7));
        // Six new chunks pass through a 4000-byte cache: only the two
        // unpinned slots turn over.
        for i in 10..16 {
            let (h, d) = chunk(i, 1000);
            cache.put(&h, &d).expect("put");
            assert!(cache.used() <= 4000);
        }
        for (h, d) in &old {
            assert_eq!(cache.get(h, d.len()).expect("get").as_deref(), Some(&d[..]));
        }
        cache.release(7);
        assert_eq!(cache.pinned(), 0);
        for i in 20..24 {
            let (h, d) = chunk(i, 1000);
            cache.put(&h, &d).expect("put");
        }
        for (h, d) in &old {
            assert_eq!(
                cache.get(h, d.len()).expect("get"),
                None,
                "evicted once released"
            );
        }
    }

    #[test]
    fn an_unclaimed_lease_lapses_and_a_claimed_one_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cache = DiskChunkCache::open(dir.path(), 1 << 20).expect("opens");
        let (h, d) = chunk(1, 1000);
        cache.put(&h, &d).expect("put");
        let now = Instant::now();
        let later = now + Duration::from_secs(61);
        cache.inventory(1, 1 << 20, 10, now + Duration::from_secs(60), now);
        cache.inventory(2, 1 << 20, 10, now + Duration::from_secs(60), now);
        assert!(cache.claim(2));
        cache.expire_leases(later);
        assert!(!cache.claim(1), "lapsed");
        assert_eq!(cache.pinned(), 1000, "lease 2 still pins the chunk");
        cache.release(2);
        assert_eq!(cache.pinned(), 0);
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    #[cfg(unix)]
    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[cfg(unix)]
    #[test]
    fn directories_are_0700_and_chunks_0600() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("caches");
        let dir = root.join("key");
        let mut cache = DiskChunkCache::open(&dir, 1 << 20).expect("opens");
        let (h, d) = chunk(3, 1000);
        cache.put(&h, &d).expect("put");
        let file = cache.path(&h);
        let fan = file.parent().expect("fan directory").to_path_buf();
        assert_eq!(mode(&root), 0o700, "a created parent");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&fan), 0o700);
        assert_eq!(mode(&file), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn a_cache_with_open_modes_is_tightened_on_open() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("key");
        let (h, d) = chunk(4, 1000);
        let (file, fan) = {
            let mut cache = DiskChunkCache::open(&dir, 1 << 20).expect("opens");
            cache.put(&h, &d).expect("put");
            let file = cache.path(&h);
            let fan = file.parent().expect("fan directory").to_path_buf();
            (file, fan)
        };
        chmod(&dir, 0o755);
        chmod(&fan, 0o775);
        chmod(&file, 0o644);
        let mut cache = DiskChunkCache::open(&dir, 1 << 20).expect("reopens");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&fan), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(
            cache.get(&h, d.len()).expect("get").as_deref(),
            Some(&d[..])
        );
    }
}
