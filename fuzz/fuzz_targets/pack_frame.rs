//! The pack decoder over arbitrary bytes: never panics, never releases
//! bytes it has not verified, memory bounded by the format's limits.
//!
//! The first input byte picks the mode. Even: the bytes are fed as they
//! are (exercises framing and the digest check). Odd: every frame header
//! found is given a matching BLAKE3 digest first, so that the fuzzer gets
//! past the digest into the ops, references and stream verification.
#![no_main]

use fjord_pack::format::{FrameHeader, FORMAT_VERSION, FRAME_MAGIC, HEADER_LEN};
use fjord_pack::{NoCache, PackDecoder, UnpackOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        reseal(rest)
    };
    let opts = UnpackOptions {
        max_held: 4 << 20,
        store_chunks: true,
    };
    let mut decoder = PackDecoder::new(opts);
    let mut out = Vec::new();
    let piece = 1 + (mode as usize >> 1) * 97;
    for chunk in bytes.chunks(piece) {
        decoder.feed(chunk);
        if decoder.decode(&mut NoCache, &mut out).is_err() {
            return;
        }
    }
    let _ = decoder.finish();
});

/// Rewrites each frame header found so that it parses and its digest
/// matches; section lengths are clamped to the bytes that follow.
fn reseal(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut at = 0;
    while at + HEADER_LEN <= input.len() {
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&input[at..at + HEADER_LEN]);
        raw[0..4].copy_from_slice(&FRAME_MAGIC);
        raw[4] = FORMAT_VERSION;
        let left = (input.len() - at - HEADER_LEN) as u32;
        let packed = u32::from_le_bytes([raw[28], raw[29], raw[30], raw[31]]) % (left + 1);
        raw[28..32].copy_from_slice(&packed.to_le_bytes());
        let stored = u32::from_le_bytes([raw[36], raw[37], raw[38], raw[39]]) % (left - packed + 1);
        raw[36..40].copy_from_slice(&stored.to_le_bytes());
        let body = at + HEADER_LEN;
        let packed_bytes = &input[body..body + packed as usize];
        match FrameHeader::parse(&raw) {
            Ok(mut h) => {
                h.digest = h.compute_digest(packed_bytes);
                out.extend_from_slice(&h.to_bytes());
            }
            Err(_) => out.extend_from_slice(&raw),
        }
        out.extend_from_slice(&input[body..body + (packed + stored) as usize]);
        at = body + (packed + stored) as usize;
    }
    out.extend_from_slice(&input[at..]);
    out
}
