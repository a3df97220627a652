//! Fuzz target: a definitions.json, parsed and printed back (see ../targets.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../targets.rs"]
#[allow(dead_code)] // each target uses one of the shared functions
mod targets;

fuzz_target!(|data: &[u8]| targets::definitions(data));
