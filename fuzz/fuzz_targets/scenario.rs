//! Fuzz target `scenario`: the oracle `vesim::fuzzing::scenario`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vesim::fuzzing::scenario(data));
