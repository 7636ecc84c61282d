//! The receiver's persistent chunk cache: one file per chunk, named by its
//! BLAKE3, bounded in bytes, least recently used evicted first. This is an
//! I/O edge; the dedup logic only sees it through [`ReceiverHoldings`] and
//! [`ChunkStore`].
//!
//! Recency survives restarts through file modification times (a hit
//! touches the file). Chunks the cache has said "yes" to in
//! [`ReceiverHoldings::holds`] are pinned until the cache is dropped, so a
//! sender's reference can always be resolved; new chunks only evict
//! unpinned ones, and are not kept when everything is pinned.

use crate::error::CacheError;
use crate::hash::{BuildPrefixHasher, ChunkHash};
use crate::holdings::{ChunkStore, ReceiverHoldings};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

struct Entry {
    len: u64,
    tick: u64,
    pinned: bool,
}

/// A directory of chunks, bounded in bytes.
pub struct DiskChunkCache {
    dir: PathBuf,
    capacity: u64,
    used: u64,
    tick: u64,
    entries: HashMap<ChunkHash, Entry, BuildPrefixHasher>,
    by_age: BTreeMap<u64, ChunkHash>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl DiskChunkCache {
    /// Opens (creating if needed) the cache in `dir`, holding at most
    /// `capacity` bytes of chunks; evicts down to it at once.
    pub fn open(dir: &Path, capacity: u64) -> Result<DiskChunkCache, CacheError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut found = Vec::new();
        for fan in fs::read_dir(dir).map_err(io_err(dir))? {
            let fan = fan.map_err(io_err(dir))?.path();
            if !fan.is_dir() {
                continue;
            }
            for file in fs::read_dir(&fan).map_err(io_err(&fan))? {
                let path = file.map_err(io_err(&fan))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                match ChunkHash::from_hex(name) {
                    Some(hash) => {
                        let meta = fs::metadata(&path).map_err(io_err(&path))?;
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
        };
        for (_, hash, len) in found {
            cache.track(hash, len, false);
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

    fn track(&mut self, hash: ChunkHash, len: u64, pinned: bool) {
        self.tick += 1;
        self.used += len;
        self.by_age.insert(self.tick, hash);
        self.entries.insert(
            hash,
            Entry {
                len,
                tick: self.tick,
                pinned,
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
        e.pinned |= pin;
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
                    if !e.pinned {
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
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, data).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        self.track(*hash, len, false);
        Ok(())
    }
}
