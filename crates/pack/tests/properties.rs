//! Property tests: synthetic streams of blocks drawn from a small pool (so
//! repeats are common), random frame targets, window sizes and receiver
//! cache contents; the round trip is always exact.

use bytes::Bytes;
use fjord_pack::{
    pack, unpack, CacheError, ChunkHash, ChunkStore, PackOptions, ReceiverHoldings, UnpackOptions,
};
use fjord_stream::builder::StreamBuilder;
use fjord_stream::{ByteOrder, FeatureFlags};
use fjord_suite::XorShift;
use proptest::prelude::*;
use std::collections::HashMap;

/// An in-memory receiver cache: answers and resolves from the same map.
#[derive(Default)]
struct MemCache(HashMap<ChunkHash, Bytes>);

impl ReceiverHoldings for MemCache {
    fn holds(&mut self, hashes: &[ChunkHash]) -> Result<Vec<bool>, CacheError> {
        Ok(hashes.iter().map(|h| self.0.contains_key(h)).collect())
    }
}

impl ChunkStore for MemCache {
    fn get(&mut self, hash: &ChunkHash, _: usize) -> Result<Option<Bytes>, CacheError> {
        Ok(self.0.get(hash).cloned())
    }
    fn put(&mut self, hash: &ChunkHash, data: &[u8]) -> Result<(), CacheError> {
        self.0.insert(*hash, Bytes::copy_from_slice(data));
        Ok(())
    }
}

fn pool_block(kind: u8, seed: u64, len: usize) -> Vec<u8> {
    let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    match kind % 3 {
        0 => (0..len).map(|_| rng.next_u64() as u8).collect(),
        1 => (0..len)
            .map(|i| b"abcdefgh"[(i + seed as usize) % 8])
            .collect(),
        _ => vec![seed as u8; len],
    }
}

#[derive(Debug, Clone)]
struct Case {
    order_big: bool,
    /// (pool index, block size shift) per WRITE.
    writes: Vec<(usize, u8)>,
    compressed_every: usize,
    frame_target: usize,
    window_bytes: u64,
    /// Pool entries the receiver's cache holds before the transfer.
    cached: Vec<bool>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        prop::collection::vec((0usize..12, 9u8..=17), 1..48),
        1usize..6,
        prop_oneof![Just(1usize), 1usize..4096, 4096usize..(2 << 20)],
        prop_oneof![Just(0u64), 1u64..(1 << 20), Just(64 << 20)],
        prop::collection::vec(any::<bool>(), 12),
    )
        .prop_map(
            |(order_big, writes, compressed_every, frame_target, window_bytes, cached)| Case {
                order_big,
                writes,
                compressed_every,
                frame_target,
                window_bytes,
                cached,
            },
        )
}

fn build(case: &Case) -> (Vec<u8>, Vec<Vec<u8>>) {
    let order = if case.order_big {
        ByteOrder::Big
    } else {
        ByteOrder::Little
    };
    let features = FeatureFlags(
        FeatureFlags::LARGE_BLOCKS | FeatureFlags::EMBED_DATA | FeatureFlags::COMPRESSED,
    );
    let mut b = StreamBuilder::with(order, "tank/prop@p", 11, 0, features, None);
    b.object(2, 1 << 17, &[1u8; 168]);
    let mut payloads = Vec::new();
    for (i, &(pool, shift)) in case.writes.iter().enumerate() {
        let data = pool_block(pool as u8, pool as u64, 1 << shift);
        if i % case.compressed_every == case.compressed_every - 1 {
            b.write_compressed(2, (i as u64) << 17, 1 << 17, 15, &data);
        } else {
            b.write(2, (i as u64) << 17, &data);
        }
        if i % 7 == 3 {
            b.write_embedded(2, (i as u64) << 17, 4096, &data[..100]);
            b.spill(2, &data[..512.min(data.len())]);
            b.free(2, (i as u64) << 17, 4096);
        }
        payloads.push(data);
    }
    (b.finish(), payloads)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_stream_any_frames_any_cache_round_trips(case in case()) {
        let (stream, payloads) = build(&case);
        let mut cache = MemCache::default();
        for (i, held) in case.cached.iter().enumerate() {
            if *held {
                // Every size a pool entry is written at.
                for shift in 9..=17u8 {
                    let d = pool_block(i as u8, i as u64, 1 << shift);
                    cache.0.insert(ChunkHash::of(&d), Bytes::from(d));
                }
            }
        }
        let _ = payloads;
        let opts = PackOptions {
            frame_target: case.frame_target,
            window_bytes: case.window_bytes,
            workers: 1 + case.writes.len() % 3,
            ..Default::default()
        };
        let mut packed = Vec::new();
        let summary = pack(&stream[..], &mut packed, &opts, &mut cache).expect("packs");
        prop_assert_eq!(summary.stats.stream_bytes, stream.len() as u64);
        let mut out = Vec::new();
        let un = unpack(&packed[..], &mut out, &mut cache, &UnpackOptions::default())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(out == stream, "rebuilt stream differs");
        prop_assert_eq!(un.receipt, summary.receipt);
        prop_assert_eq!(
            un.stats.window_refs + un.stats.cache_refs,
            summary.stats.window_refs + summary.stats.cache_refs
        );
    }
}
