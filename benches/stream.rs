//! Decode + verify throughput of the send-stream codec: the first stage of
//! every byte fjord moves. Target: >= 2 GB/s per core on 128 KiB WRITEs.
//!
//! Run: `cargo bench --bench stream` (figures land in target/criterion).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fjord_stream::builder::StreamBuilder;
use fjord_stream::fletcher::fletcher4;
use fjord_stream::{ByteOrder, Decoder, FeatureFlags};
use fjord_suite::XorShift;

const RECORD: usize = 128 * 1024;

/// A full stream of `total` bytes of 128 KiB WRITE records with random data.
fn synthetic_stream(order: ByteOrder, total: usize) -> Vec<u8> {
    let mut rng = XorShift(0xfeed);
    let block: Vec<u8> = (0..RECORD).map(|_| rng.next_u64() as u8).collect();
    let features = FeatureFlags(FeatureFlags::EMBED_DATA | FeatureFlags::LARGE_BLOCKS);
    let mut b = StreamBuilder::with(order, "tank/bench@snap", 42, 0, features, None);
    let files = total / RECORD / 64 + 1;
    let mut written = 0;
    'outer: for obj in 0..files as u64 {
        b.object(obj + 2, RECORD as u32, &[0u8; 168]);
        for i in 0..64u64 {
            if written >= total {
                break 'outer;
            }
            b.write(obj + 2, i * RECORD as u64, &block);
            written += RECORD;
        }
    }
    b.finish()
}

fn decode_all(stream: &[u8], piece: usize) -> u64 {
    let mut d = Decoder::default();
    let mut records = 0;
    for chunk in stream.chunks(piece) {
        d.feed(chunk);
        while let Some(_r) = d.next_record().expect("valid stream") {
            records += 1;
        }
    }
    d.finish().expect("complete stream");
    records
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_verify_128k_writes");
    g.sample_size(10);
    for order in [ByteOrder::Little, ByteOrder::Big] {
        let stream = synthetic_stream(order, 256 << 20);
        g.throughput(Throughput::Bytes(stream.len() as u64));
        g.bench_with_input(
            BenchmarkId::new(order.name(), "1MiB-reads"),
            &stream,
            |b, s| b.iter(|| decode_all(s, 1 << 20)),
        );
    }
    g.finish();
}

fn bench_fletcher(c: &mut Criterion) {
    let mut g = c.benchmark_group("fletcher4");
    let data = vec![0xa5u8; 1 << 20];
    g.throughput(Throughput::Bytes(data.len() as u64));
    for order in [ByteOrder::Little, ByteOrder::Big] {
        g.bench_with_input(BenchmarkId::new(order.name(), "1MiB"), &data, |b, d| {
            b.iter(|| fletcher4(d, order))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_decode, bench_fletcher);
criterion_main!(benches);
