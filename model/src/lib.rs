//! vesim-model: the x86-64 guest and the VT-x hardware vesim simulates, with nothing specific to
//! HVMI. `cargo doc --open -p vesim-model` renders this page.
//!
//! # Layers
//!
//! From the bottom up, each layer uses only those below it:
//!
//! 1. Values: [`addr`] (the typed identities `Gpa`, `Gla`, `Gfn`, `ViewId`, `VcpuId`),
//!    [`paging`]'s entries and [`ept`]'s rights, and [`exit`] (every way a step can end, as a
//!    value).
//! 2. State: [`memory`] (sparse guest-physical memory), [`ept`]'s views and [`vcpu`] (the
//!    register file, control registers and the per-VCPU VMX state, with the register helpers
//!    instructions name).
//! 3. The decoder adapter, [`cpu::decode`]: the only module that sees iced-x86. It turns bytes
//!    into a vesim-owned [`cpu::decode::Insn`] with its operands, prefixes and memory uses; no
//!    iced type leaves it, and the `vesim` crate does not depend on iced-x86.
//! 4. The reference CPU, [`cpu::Machine`]: memory, the EPT views and the configuration shared by
//!    every VCPU. Its methods take the one [`vcpu::Vcpu`] they act on as an argument.
//!
//! # The step
//!
//! [`cpu::Machine::step`] runs one instruction on one VCPU and ends in exactly one
//! [`exit::Outcome`]: fetch through paging and EPT (a second page only when the instruction
//! crosses into it), decode, plan the memory accesses, translate every span (the walker sets
//! A/D bits and may itself take an EPT violation), read, execute the pure semantics of
//! `cpu::exec`, write, and commit registers and RIP last. A fault at any point returns its
//! outcome with nothing committed; the step also lists the linear writes it made.
//!
//! # One page-table write
//!
//! A guest `mov [rdi], rax` whose target is a page-table page that EPT makes read-only: the
//! translation reaches the leaf, EPT refuses the write and `cpu::mmu` returns an
//! [`exit::EptViolation`] (qualification, GLA, GPA, whether suppress-#VE allows conversion).
//! [`cpu::Machine::ept_violation`] applies HW §2.1: with #VE enabled, CR0.PE set, a
//! convertible violation and a zero semaphore it writes the information area
//! ([`ve_info::VeInfo`]), sets the semaphore and delivers vector 20 through the IDT
//! (`cpu::delivery`), giving `Outcome::VeDelivered`; otherwise the outcome is an EPT-violation
//! exit for the hypervisor. Nothing of the store is written: the instruction is redone or
//! emulated by whoever handles the outcome (in vesim, the agent or introcore).
//!
//! # Modules
//!
//! - [`addr`]: address and identity newtypes (`Gpa`, `Gla`, `Gfn`, `ViewId`, `VcpuId`).
//! - [`memory`]: sparse guest-physical memory.
//! - [`paging`]: 4-level entries, the page-table builder and the hardware walker.
//! - [`ept`]: EPT views, rights, suppress-#VE and the violation qualification.
//! - [`vcpu`]: the register file, registers as instructions name them, control registers and
//!   per-VCPU VMX state.
//! - [`ve_info`]: the hardware bytes of the #VE information area.
//! - [`cpu`]: the reference CPU (the decoder adapter and its owned instruction type, MMU,
//!   semantics, event delivery, VMFUNC).
//! - [`exit`]: the outcomes of an access or an instruction, as values.
//! - [`fastmap`]: the integer-keyed hash map behind memory and EPT lookups.
//! - `reference` (feature `reference`): an independent translator, the walker's oracle.
//!
//! The semantics are those of `VE-SEMANTICS.md` section 1; `HW §n` in the docs refers to
//! `INTEL-VMX.md`.

pub mod addr;
pub mod cpu;
pub mod ept;
pub mod exit;
pub mod fastmap;
pub mod memory;
pub mod paging;
#[cfg(feature = "reference")]
pub mod reference;
pub mod tracked;
pub mod vcpu;
pub mod ve_info;

pub use addr::{Gfn, Gla, Gpa, VcpuId, ViewId};
pub use cpu::{Machine, MachineConfig, Step};
pub use exit::{EptViolation, ExitReason, Outcome};
