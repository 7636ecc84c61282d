//! Fuzzes the packed-nvlist decoder (BEGIN payloads, resume tokens): any
//! bytes give a list or an error; a decoded list re-encodes and decodes to
//! itself.
#![no_main]

use fjord_stream::nvlist;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((list, encoding)) = nvlist::decode(data) {
        let again = nvlist::encode(&list, encoding);
        let (back, _) = nvlist::decode(&again).expect("our own encoding decodes");
        assert_eq!(back, list);
    }
});
