//! Fuzzes the tripwire's meter (it walks a sender's stream on both ends):
//! any bytes, cut anywhere, never panic, and the figures do not depend on
//! where the pieces were cut; shares stay within 0..=1.
#![no_main]

use fjord_tripwire::Meter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, Option<u64>, &[u8])| {
    let (cut, base_txg, data) = input;
    let mut whole = Meter::new(base_txg);
    whole.feed(data);
    let mut pieces = Meter::new(base_txg);
    let step = usize::from(cut % 4096) + 1;
    for chunk in data.chunks(step) {
        pieces.feed(chunk);
    }
    assert_eq!(whole.figures(), pieces.figures());
    if let Some(f) = whole.figures() {
        for share in [f.incompressible_share(), f.rewritten_share()].into_iter().flatten() {
            assert!((0.0..=1.0).contains(&share), "share {share}");
        }
    }
});
