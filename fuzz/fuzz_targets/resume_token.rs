//! Fuzzes the `receive_resume_token` decoder: arbitrary text must give a
//! token or an error, never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = fjord_stream::token::decode(text);
    }
    // Also reach the decompression and nvlist stages with a valid frame
    // around arbitrary payload bytes.
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let sum = fjord_stream::fletcher::fletcher4(data, fjord_stream::ByteOrder::Little).0[0];
    let _ = fjord_stream::token::decode(&format!("1-{sum:x}-{:x}-{hex}", data.len() * 4));
});
