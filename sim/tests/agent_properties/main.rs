//! Properties of the #VE agent (ARCHITECTURE.md invariants I2, I4, I5, I7, I9; VE-SEMANTICS
//! sections 1–3):
//!
//! 1. Fidelity (I2): every accepted instruction form the agent emulates gives, through
//!    `vesim::verdict::run`, the entry value, the 16 registers, every defined RFLAGS bit and
//!    the RIP the reference CPU (`vesim::exec::run`) produces from the same state.
//! 2. Rejection order (VE-SEMANTICS section 2): an encoding with several defects is refused for
//!    the first of them in the documented order.
//! 3. Protocol (I4): the semaphore, the no-nesting rule and the view the agent returns to,
//!    checked after every `World::step` while the guest executes page-table writes for real.
//! 4. Statistics (I5): the identities of VE-SEMANTICS section 3 in `fixed`, and their failure in
//!    `hvmi` (Q18) once a break happened.
//! 5. Cache soundness (I7): no monitored entry is ever in the agent cache in `fixed`.
//! 6. Robustness (I9): guest-controlled bytes (instructions, registers, RFLAGS, the agent's
//!    information page, cache, CPU map and the 0x50 descriptor) never make the world panic.
//!
//! Expected values come from the spec and the SDM, or from the reference CPU for property 1;
//! nothing is copied from a run of the code under test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../kit/mod.rs"]
mod kit;

mod cache;
mod fidelity;
mod protocol;
mod rejection;
mod robustness;
mod statistics;

/// Cases per property (fixed; the whole target stays well under 20 s in `cargo test`).
const FIDELITY_CASES: u32 = 4096;
const PROTOCOL_CASES: u32 = 384;
const STATISTICS_CASES: u32 = 384;
const Q18_CASES: u32 = 96;
const CACHE_CASES: u32 = 1024;
const ROBUSTNESS_CASES: u32 = 1024;
