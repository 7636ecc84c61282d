//! The transport's message decoder on arbitrary bytes, fed in arbitrary
//! pieces: it must never panic or over-allocate, and every message it
//! accepts must re-encode to exactly the bytes it came from.
#![no_main]

use bytes::BytesMut;
use fjord_proto::message::{Message, MessageReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = (step as usize % 64) + 1;
    let mut reader = MessageReader::new();
    let mut consumed = 0usize;
    for chunk in rest.chunks(step) {
        reader.feed(chunk);
        loop {
            match reader.next_message() {
                Ok(Some(m)) => {
                    let mut out = BytesMut::new();
                    m.encode(&mut out);
                    assert_eq!(
                        &out[..],
                        &rest[consumed..consumed + out.len()],
                        "{m:?} does not re-encode to its bytes"
                    );
                    consumed += out.len();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    // A single body decoded directly behaves the same.
    let _ = Message::decode(bytes::Bytes::copy_from_slice(rest));
});
