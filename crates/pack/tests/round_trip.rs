//! Pack then unpack gives back every stream byte for byte, and the
//! receipt is the stream's BLAKE3.

use fjord_pack::{pack, unpack, NoCache, PackOptions, UnpackOptions};
use fjord_suite::{lab_fixtures, valid_corpus};

fn round_trip(name: &str, stream: &[u8], opts: &PackOptions) -> Vec<u8> {
    let mut packed = Vec::new();
    let summary = pack(stream, &mut packed, opts, &mut NoCache)
        .unwrap_or_else(|e| panic!("{name}: pack: {e}"));
    assert_eq!(summary.receipt.stream_len, stream.len() as u64, "{name}");
    assert_eq!(
        summary.receipt.digest,
        *blake3::hash(stream).as_bytes(),
        "{name}: receipt"
    );
    assert_eq!(summary.stats.wire_bytes, packed.len() as u64, "{name}");
    let mut out = Vec::new();
    let un = unpack(
        &packed[..],
        &mut out,
        &mut NoCache,
        &UnpackOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: unpack: {e}"));
    assert!(out == stream, "{name}: rebuilt stream differs");
    assert_eq!(un.receipt, summary.receipt, "{name}");
    packed
}

#[test]
fn every_corpus_stream_round_trips() {
    for s in valid_corpus() {
        for target in [1 << 20, 4096, 1] {
            let opts = PackOptions {
                frame_target: target,
                ..Default::default()
            };
            round_trip(&s.name, &s.bytes, &opts);
        }
    }
}

#[test]
fn every_lab_fixture_round_trips() {
    for (name, bytes) in lab_fixtures() {
        let packed = round_trip(&name, &bytes, &PackOptions::default());
        eprintln!("{name}: {} -> {} bytes", bytes.len(), packed.len());
    }
}
