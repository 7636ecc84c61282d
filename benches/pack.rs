//! Encode and decode throughput of the pack data path (fjord-pack): the
//! sender's frames with BLAKE3 dedup and adaptive zstd, the receiver's
//! exact, verified reassembly. Issue 4's targets: decode >= 1 GB/s; a `-c`
//! stream encodes at >= 1.5 GB/s (nothing recompressed).
//!
//! `pack_floor` measures, on one core, the work every byte of a packed
//! transfer cannot avoid: BLAKE3 (chunk address, and again for the
//! receipt), Fletcher-4, one copy, and zstd -1 on compressible data. Their
//! sum bounds what the pipeline can reach on this machine's cores.
//!
//! Run: `cargo bench --bench pack` (figures land in target/criterion).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fjord_pack::{pack, unpack, NoCache, PackOptions, UnpackOptions};
use fjord_stream::builder::StreamBuilder;
use fjord_stream::{ByteOrder, FeatureFlags};
use fjord_suite::XorShift;

const RECORD: usize = 128 * 1024;

/// What a stream's blocks look like.
#[derive(Clone, Copy)]
enum Mix {
    /// A third text, a third random, a sixth zeros, a sixth repeats.
    Mixed,
    /// Blocks as `zfs send -c` sends them: already compressed.
    Compressed,
}

fn synthetic_stream(mix: Mix, total: usize) -> Vec<u8> {
    let mut rng = XorShift(0xfeed);
    let features = FeatureFlags(
        FeatureFlags::EMBED_DATA | FeatureFlags::LARGE_BLOCKS | FeatureFlags::COMPRESSED,
    );
    let mut b = StreamBuilder::with(ByteOrder::Little, "tank/bench@snap", 42, 0, features, None);
    let words = [
        "zfs ", "send ", "stream ", "fjord ", "block ", "record ", "\n", "data ",
    ];
    let mut written = 0;
    let mut obj = 2u64;
    let mut kept: Vec<Vec<u8>> = Vec::new();
    while written < total {
        b.object(obj, RECORD as u32, &[0u8; 168]);
        for i in 0..64u64 {
            let random: Vec<u8> = (0..RECORD).map(|_| rng.next_u64() as u8).collect();
            let block = match (mix, i % 6) {
                (Mix::Compressed, _) | (Mix::Mixed, 2 | 3) => random,
                (Mix::Mixed, 0 | 1) => {
                    let mut t = Vec::with_capacity(RECORD);
                    while t.len() < RECORD {
                        t.extend_from_slice(words[(rng.next_u64() % 8) as usize].as_bytes());
                    }
                    t.truncate(RECORD);
                    t
                }
                (Mix::Mixed, 4) => vec![0u8; RECORD],
                _ => kept
                    .get((rng.next_u64() as usize) % kept.len().max(1))
                    .cloned()
                    .unwrap_or(random),
            };
            if matches!(mix, Mix::Compressed) {
                b.write_compressed(obj, i * RECORD as u64, 2 * RECORD as u64, 15, &block);
            } else {
                b.write(obj, i * RECORD as u64, &block);
            }
            if kept.len() < 64 {
                kept.push(block);
            }
            written += RECORD;
        }
        obj += 1;
    }
    b.finish()
}

fn bench_pack(c: &mut Criterion) {
    for (name, mix) in [("mixed", Mix::Mixed), ("compressed-c", Mix::Compressed)] {
        let stream = synthetic_stream(mix, 128 << 20);
        let opts = PackOptions::default();
        let mut packed = Vec::new();
        pack(&stream[..], &mut packed, &opts, &mut NoCache).expect("packs");
        eprintln!(
            "{name}: {} stream bytes -> {} wire bytes ({:.1}%)",
            stream.len(),
            packed.len(),
            packed.len() as f64 * 100.0 / stream.len() as f64
        );
        let mut g = c.benchmark_group(format!("pack_{name}"));
        g.sample_size(10);
        g.throughput(Throughput::Bytes(stream.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("encode", "1MiB-frames"),
            &stream,
            |b, s| {
                b.iter(|| {
                    let mut out = Vec::with_capacity(packed.len() + (1 << 20));
                    pack(&s[..], &mut out, &opts, &mut NoCache).expect("packs");
                    out.len()
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("decode", "1MiB-frames"),
            &packed,
            |b, p| {
                b.iter(|| {
                    let mut out = Vec::with_capacity(stream.len());
                    unpack(&p[..], &mut out, &mut NoCache, &UnpackOptions::default())
                        .expect("unpacks");
                    out.len()
                })
            },
        );
        g.finish();
    }
}

fn bench_floor(c: &mut Criterion) {
    let stream = synthetic_stream(Mix::Mixed, 32 << 20);
    let mut g = c.benchmark_group("pack_floor");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("blake3-128KiB-chunks", |b| {
        b.iter(|| {
            stream
                .chunks(RECORD)
                .map(|c| blake3::hash(c).as_bytes()[0] as u64)
                .sum::<u64>()
        })
    });
    g.bench_function("fletcher4", |b| {
        b.iter(|| fjord_stream::fletcher::fletcher4(&stream, ByteOrder::Little))
    });
    g.bench_function("copy", |b| {
        let mut out = vec![0u8; stream.len()];
        b.iter(|| {
            out.copy_from_slice(&stream);
            out[0]
        })
    });
    g.bench_function("zstd-1", |b| {
        let mut z = zstd::bulk::Compressor::new(1).expect("zstd");
        b.iter(|| {
            stream
                .chunks(1 << 20)
                .map(|c| z.compress(c).expect("compresses").len())
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_pack, bench_floor);
criterion_main!(benches);
