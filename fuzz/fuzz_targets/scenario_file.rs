//! Fuzz target `scenario_file`: the oracle `vesim::fuzzing::scenario_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vesim::fuzzing::scenario_file(data));
