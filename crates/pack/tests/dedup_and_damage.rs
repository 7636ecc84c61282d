//! Dedup costs ~0 wire bytes for repeats (within a stream and across
//! transfers through the chunk cache); damage of every kind stops the
//! decoder with an error naming the frame, having released nothing past
//! the last verified record.

use fjord_pack::format::{FrameHeader, HEADER_LEN};
use fjord_pack::{
    pack, unpack, ChunkHash, ChunkStore, DiskChunkCache, NoCache, PackDecoder, PackOptions,
    ReceiverHoldings, UnpackError, UnpackOptions,
};
use fjord_stream::builder::StreamBuilder;
use fjord_stream::{ByteOrder, Decoder, FeatureFlags};
use fjord_suite::{lab_fixtures, XorShift};

const BLOCK: usize = 128 * 1024;

fn random_block(seed: u64) -> Vec<u8> {
    let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..BLOCK).map(|_| rng.next_u64() as u8).collect()
}

fn text_block(seed: u64) -> Vec<u8> {
    format!("line {seed} of a text file that compresses well\n")
        .repeat(BLOCK)
        .into_bytes()[..BLOCK]
        .to_vec()
}

/// A stream writing `blocks` to object 2 and then, as object 3, `repeat`.
fn stream_of(blocks: &[Vec<u8>], repeat: &[Vec<u8>]) -> Vec<u8> {
    let features = FeatureFlags(FeatureFlags::LARGE_BLOCKS | FeatureFlags::EMBED_DATA);
    let mut b = StreamBuilder::with(ByteOrder::Little, "tank/fs@a", 7, 0, features, None);
    for (obj, data) in [(2u64, blocks), (3, repeat)] {
        b.object(obj, BLOCK as u32, &[0u8; 168]);
        for (i, block) in data.iter().enumerate() {
            b.write(obj, (i * BLOCK) as u64, block);
        }
    }
    b.finish()
}

fn pack_with(
    stream: &[u8],
    holdings: &mut (dyn ReceiverHoldings + Send),
) -> (Vec<u8>, fjord_pack::PackStats) {
    let mut packed = Vec::new();
    let s = pack(stream, &mut packed, &PackOptions::default(), holdings).expect("packs");
    (packed, s.stats)
}

#[test]
fn a_repeated_payload_costs_almost_nothing_the_second_time() {
    let blocks: Vec<Vec<u8>> = (0..24).map(random_block).collect();
    let once = stream_of(&blocks, &[]);
    let twice = stream_of(&blocks, &blocks);
    let (p1, s1) = pack_with(&once, &mut NoCache);
    let (p2, s2) = pack_with(&twice, &mut NoCache);
    assert_eq!(s1.window_refs, 0);
    assert_eq!(s2.window_refs, 24);
    assert_eq!(s2.window_ref_bytes, (24 * BLOCK) as u64);
    assert_eq!(
        s2.stored_bytes, s1.stored_bytes,
        "the repeat stores nothing"
    );
    // 24 headers and references: well under 1% of the 3 MiB repeated.
    let extra = p2.len() - p1.len();
    assert!(extra < 4096, "the repeat cost {extra} wire bytes");
    let mut out = Vec::new();
    unpack(&p2[..], &mut out, &mut NoCache, &UnpackOptions::default()).expect("unpacks");
    assert!(out == twice);
}

#[test]
fn incompressible_payloads_are_stored_and_text_is_compressed() {
    let blocks: Vec<Vec<u8>> = (0..4)
        .map(random_block)
        .chain((0..4).map(text_block))
        .collect();
    let stream = stream_of(&blocks, &[]);
    let (packed, s) = pack_with(&stream, &mut NoCache);
    assert_eq!(s.stored_bytes, (4 * BLOCK) as u64);
    assert_eq!(s.chunk_bytes, (4 * BLOCK) as u64);
    assert!(
        packed.len() < 4 * BLOCK + 64 * 1024,
        "{} wire bytes",
        packed.len()
    );
}

#[test]
fn the_chunk_cache_carries_chunks_across_transfers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks: Vec<Vec<u8>> = (0..16).map(random_block).collect();
    let first = stream_of(&blocks, &[]);
    let mut cache = DiskChunkCache::open(dir.path(), 64 << 20).expect("cache opens");
    let (p1, _) = pack_with(&first, &mut cache);
    let mut out = Vec::new();
    unpack(&p1[..], &mut out, &mut cache, &UnpackOptions::default()).expect("unpacks");
    assert!(out == first);
    assert_eq!(cache.len(), 16);
    drop(cache);

    // A later transfer, a new process: the same blocks in another object.
    let second = stream_of(&blocks[..8], &blocks[8..]);
    let mut cache = DiskChunkCache::open(dir.path(), 64 << 20).expect("cache reopens");
    let (p2, s2) = pack_with(&second, &mut cache);
    assert_eq!(s2.cache_refs, 16);
    assert!(
        p2.len() < 8192,
        "{} wire bytes for 2 MiB held by the receiver",
        p2.len()
    );
    let mut out = Vec::new();
    let un = unpack(&p2[..], &mut out, &mut cache, &UnpackOptions::default()).expect("unpacks");
    assert!(out == second);
    assert_eq!(un.stats.cache_refs, 16);
}

#[test]
fn the_chunk_cache_stays_within_its_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cache = DiskChunkCache::open(dir.path(), 4 * BLOCK as u64).expect("cache opens");
    for seed in 0..10 {
        let b = random_block(seed);
        cache.put(&ChunkHash::of(&b), &b).expect("put");
        assert!(cache.used() <= 4 * BLOCK as u64);
    }
    assert_eq!(cache.len(), 4);
    let last = random_block(9);
    assert!(cache
        .get(&ChunkHash::of(&last), BLOCK)
        .expect("get")
        .is_some());
    let first = random_block(0);
    assert!(cache
        .get(&ChunkHash::of(&first), BLOCK)
        .expect("get")
        .is_none());
}

/// Stream offsets up to which a checksum covers everything: where the
/// decoder's verified offset stands after each record.
fn verified_boundaries(stream: &[u8]) -> Vec<u64> {
    let mut d = Decoder::default();
    d.feed(stream);
    let mut v = vec![0];
    while let Some(_r) = d.next_record().expect("valid") {
        v.push(d.verified_offset());
    }
    d.finish().expect("complete");
    v.push(stream.len() as u64);
    v
}

/// Decodes `packed` sans-IO; returns the released bytes and the error.
fn decode_damaged(packed: &[u8], store: &mut dyn ChunkStore) -> (Vec<u8>, Option<UnpackError>) {
    let mut d = PackDecoder::new(UnpackOptions::default());
    let mut out = Vec::new();
    let mut released = Vec::new();
    let mut err = None;
    for piece in packed.chunks(64 * 1024) {
        d.feed(piece);
        let r = d.decode(store, &mut out);
        released.extend(out.drain(..).flat_map(|b| b.to_vec()));
        if let Err(e) = r {
            err = Some(e);
            break;
        }
    }
    if err.is_none() {
        err = d.finish().err();
    }
    (released, err)
}

fn assert_only_verified(stream: &[u8], released: &[u8], what: &str) {
    assert!(
        released == &stream[..released.len()],
        "{what}: released bytes differ from the stream"
    );
    let boundaries = verified_boundaries(stream);
    assert!(
        boundaries.contains(&(released.len() as u64)),
        "{what}: released {} bytes, not a verified boundary",
        released.len()
    );
}

fn damage_subjects() -> Vec<(String, Vec<u8>)> {
    let blocks: Vec<Vec<u8>> = (0..6)
        .map(random_block)
        .chain((0..6).map(text_block))
        .collect();
    let mut v = vec![("synthetic".to_string(), stream_of(&blocks, &blocks[..3]))];
    v.extend(
        lab_fixtures()
            .into_iter()
            .filter(|(n, _)| n == "full.zsend" || n == "raw-w.zsend"),
    );
    v
}

#[test]
fn a_corrupted_frame_is_named_and_nothing_unverified_is_released() {
    let opts = PackOptions {
        frame_target: 64 * 1024,
        ..Default::default()
    };
    let mut rng = XorShift(99);
    for (name, stream) in damage_subjects() {
        let mut packed = Vec::new();
        pack(&stream[..], &mut packed, &opts, &mut NoCache).expect("packs");
        for _ in 0..40 {
            let pos = rng.range(0, packed.len() - 1);
            let mut damaged = packed.clone();
            damaged[pos] ^= 1 << rng.range(0, 7);
            let (released, err) = decode_damaged(&damaged, &mut NoCache);
            let err = err.unwrap_or_else(|| panic!("{name}: flip at {pos} went unnoticed"));
            let msg = err.to_string();
            assert!(
                msg.contains("frame #") || msg.contains("pack byte"),
                "{name}: {msg}"
            );
            assert_only_verified(&stream, &released, &format!("{name} flip at {pos}"));
        }
    }
}

#[test]
fn a_truncated_pack_is_reported_and_nothing_unverified_is_released() {
    let opts = PackOptions {
        frame_target: 32 * 1024,
        ..Default::default()
    };
    let mut rng = XorShift(5);
    for (name, stream) in damage_subjects() {
        let mut packed = Vec::new();
        pack(&stream[..], &mut packed, &opts, &mut NoCache).expect("packs");
        let mut cuts: Vec<usize> = (0..30).map(|_| rng.range(0, packed.len() - 1)).collect();
        cuts.push(packed.len() - 1);
        cuts.push(HEADER_LEN);
        for cut in cuts {
            let (released, err) = decode_damaged(&packed[..cut], &mut NoCache);
            let err = err.unwrap_or_else(|| panic!("{name}: cut at {cut} went unnoticed"));
            assert!(
                matches!(
                    err,
                    UnpackError::Truncated { .. } | UnpackError::MissingEnd { .. }
                ),
                "{name}: cut at {cut}: {err}"
            );
            assert!(err.to_string().contains("truncated"), "{err}");
            assert_only_verified(&stream, &released, &format!("{name} cut at {cut}"));
        }
    }
}

/// A receiver that claims to hold everything and holds nothing.
struct Liar;

impl ReceiverHoldings for Liar {
    fn holds(&mut self, hashes: &[ChunkHash]) -> Result<Vec<bool>, fjord_pack::CacheError> {
        Ok(vec![true; hashes.len()])
    }
}

#[test]
fn a_reference_the_receiver_cannot_resolve_stops_the_decoder() {
    for (name, stream) in damage_subjects() {
        let mut packed = Vec::new();
        pack(&stream[..], &mut packed, &PackOptions::default(), &mut Liar).expect("packs");
        let (released, err) = decode_damaged(&packed, &mut NoCache);
        let err = err.unwrap_or_else(|| panic!("{name}: dangling reference went unnoticed"));
        assert!(
            matches!(err, UnpackError::MissingChunk { frame: 1, .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("does not hold"), "{err}");
        assert_only_verified(&stream, &released, &name);
    }
}

#[test]
fn a_well_sealed_frame_with_a_wrong_reference_fails_verification() {
    // Two identical blocks: the second goes as a reference. Point it at the
    // first block of another content held in the window, reseal the frame:
    // the digest passes, the rebuilt record's Fletcher-4 must not.
    let a = text_block(1);
    let b = text_block(2);
    let stream = stream_of(&[a.clone(), b.clone()], std::slice::from_ref(&a));
    let mut packed = Vec::new();
    pack(
        &stream[..],
        &mut packed,
        &PackOptions::default(),
        &mut NoCache,
    )
    .expect("packs");
    let (ha, hb) = (ChunkHash::of(&a), ChunkHash::of(&b));
    // Frames: START, then DATA frames; find the REF op to `a` after
    // decompressing, rewrite it to `b`, recompress with level 1.
    let mut at = 0;
    let mut rewritten = Vec::new();
    while at < packed.len() {
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&packed[at..at + HEADER_LEN]);
        let mut h = FrameHeader::parse(&raw).expect("header");
        let p = &packed[at + HEADER_LEN..at + HEADER_LEN + h.packed_len as usize];
        let stored = &packed[at + HEADER_LEN + h.packed_len as usize..at + h.wire_len() as usize];
        let mut plain = match h.codec {
            fjord_pack::format::Codec::Zstd => {
                zstd::bulk::decompress(p, h.unpacked_len as usize).expect("zstd")
            }
            fjord_pack::format::Codec::None => p.to_vec(),
        };
        let mut needle = vec![fjord_pack::format::OP_REF];
        needle.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        needle.extend_from_slice(&ha.0);
        if let Some(pos) = plain.windows(needle.len()).position(|w| w == needle) {
            plain[pos + 5..pos + 37].copy_from_slice(&hb.0);
        }
        h.codec = fjord_pack::format::Codec::None;
        h.packed_len = plain.len() as u32;
        h.unpacked_len = plain.len() as u32;
        h.digest = h.compute_digest(&plain);
        rewritten.extend_from_slice(&h.to_bytes());
        rewritten.extend_from_slice(&plain);
        rewritten.extend_from_slice(stored);
        at += h.wire_len() as usize - plain.len() + p.len();
    }
    assert_ne!(rewritten.len(), 0);
    let (released, err) = decode_damaged(&rewritten, &mut NoCache);
    let err = err.expect("a wrong reference is caught");
    assert!(matches!(err, UnpackError::Stream { .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_only_verified(&stream, &released, "wrong reference");
}
