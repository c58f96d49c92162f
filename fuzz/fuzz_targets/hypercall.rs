//! Fuzz target `hypercall`: the oracle `vesim::fuzzing::hypercall`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vesim::fuzzing::hypercall(data));
