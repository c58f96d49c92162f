//! Fuzz target `scenario_file`: the oracle `vesim::cli::oracle::scenario_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vesim::cli::oracle::scenario_file(data));
