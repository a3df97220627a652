//! Arbitrary bytes through Warren's frame splitter and every payload decoder (see ../decode.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../decode.rs"]
mod decode;

fuzz_target!(|data: &[u8]| decode::decode_all(data));
