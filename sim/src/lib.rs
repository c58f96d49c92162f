//! vesim: a deterministic simulator and fuzzing harness for #VE-based VM introspection.
//!
//! The machine (paging, EPT, #VE, VMFUNC, the reference CPU) lives in crate `vesim-model`. This
//! crate holds what runs on it:
//!
//! - [`layout`]: every fixed guest address vesim uses, documented in one place.
//! - [`exec`]: one instruction on a small machine, the engine behind `vesim exec`.
//! - [`cli`]: the `vesim` command line.

pub mod cli;
pub mod exec;
pub mod layout;
