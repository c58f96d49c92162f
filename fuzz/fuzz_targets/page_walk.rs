//! Fuzz target `page_walk`: the oracle `vesim::fuzzing::page_walk`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vesim::fuzzing::page_walk(data));
