//! Fuzz target `agent_decode`: vesim's agent decode-level verdict (`hvmi`) against bddisasm's,
//! as HVMI's agent calls it, on the first 15 bytes of the input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vesim_fuzz::agent_decode(data));
