//! Fuzz target `agent_instruction`: the oracle `vesim::fuzzing::agent_instruction`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vesim::fuzzing::agent_instruction(data));
