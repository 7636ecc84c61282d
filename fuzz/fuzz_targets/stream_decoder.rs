//! Fuzzes the send-stream decoder with arbitrary bytes fed in arbitrary
//! pieces. The first byte picks the piece size; the decoder must never
//! panic, never hand out a record past an error, and, when it accepts a
//! stream, must re-encode it byte for byte.
#![no_main]

use fjord_stream::{Decoder, DecoderOptions, Encoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else { return };
    let piece = 1 + (first as usize % 64) * 37;
    let opts = DecoderOptions { verify_checksums: first & 0x80 == 0, allow_missing_end: first & 0x40 != 0 };
    let mut d = Decoder::new(opts);
    let mut records = Vec::new();
    for chunk in stream.chunks(piece) {
        d.feed(chunk);
        loop {
            match d.next_record() {
                Ok(Some(r)) => records.push(r),
                Ok(None) => break,
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    return;
                }
            }
        }
    }
    if d.finish().is_ok() {
        let order = d.state().order.expect("an accepted stream has a byte order");
        let mut enc = Encoder::new(order);
        let mut out = Vec::new();
        for r in &records {
            enc.write_record(r, &mut out);
        }
        assert_eq!(out, stream, "accepted stream must re-encode byte for byte");
    }
});
