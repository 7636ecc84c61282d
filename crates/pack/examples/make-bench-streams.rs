//! Writes the synthetic streams `scripts/bench-pack` measures into a
//! directory: mixed.zsend (text, random, zeros and repeated blocks),
//! compressed-c.zsend (blocks as `zfs send -c` sends them) and random.zsend
//! (incompressible), 256 MiB each (`FJORD_BENCH_MIB` overrides).
//! `scripts/bench --synthetic-gib N` uses its mixed and random streams.

use fjord_stream::builder::StreamBuilder;
use fjord_stream::{ByteOrder, FeatureFlags};
use std::path::PathBuf;

const RECORD: usize = 128 * 1024;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn stream(kind: &str, total: usize) -> Vec<u8> {
    let mut rng = Rng(0x5eed);
    let features = FeatureFlags(
        FeatureFlags::EMBED_DATA | FeatureFlags::LARGE_BLOCKS | FeatureFlags::COMPRESSED,
    );
    let mut b = StreamBuilder::with(ByteOrder::Little, "tank/bench@b", 42, 7, features, None);
    let words = [
        "zfs ", "send ", "stream ", "fjord\n", "block ", "record ", "0x1f ", "data ",
    ];
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let (mut written, mut obj) = (0, 2u64);
    while written < total {
        b.object(obj, RECORD as u32, &[0u8; 168]);
        for i in 0..64u64 {
            let mut random = vec![0u8; RECORD];
            for w in random.chunks_mut(8) {
                w.copy_from_slice(&rng.next().to_le_bytes());
            }
            let block = match (kind, i % 6) {
                ("mixed", 0 | 1) => {
                    let mut t = Vec::with_capacity(RECORD + 8);
                    while t.len() < RECORD {
                        t.extend_from_slice(words[(rng.next() % 8) as usize].as_bytes());
                    }
                    t.truncate(RECORD);
                    t
                }
                ("mixed", 4) => vec![0u8; RECORD],
                // Duplicated files: a block written before.
                ("mixed", 5) if !kept.is_empty() => {
                    kept[(rng.next() as usize) % kept.len()].clone()
                }
                _ => random,
            };
            if kind == "compressed-c" {
                b.write_compressed(obj, i * RECORD as u64, 2 * RECORD as u64, 15, &block);
            } else {
                b.write(obj, i * RECORD as u64, &block);
            }
            if kept.len() < 256 && i % 3 == 0 {
                kept.push(block);
            }
            written += RECORD;
        }
        obj += 1;
    }
    b.finish()
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let mib: usize = std::env::var("FJORD_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    for kind in ["mixed", "compressed-c", "random"] {
        let path = dir.join(format!("{kind}.zsend"));
        std::fs::write(&path, stream(kind, mib << 20))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
