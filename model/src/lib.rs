//! vesim-model: the x86-64 guest and the VT-x hardware vesim simulates, with nothing specific to
//! HVMI.
//!
//! - [`addr`]: address and identity newtypes (`Gpa`, `Gla`, `Gfn`, `ViewId`, `VcpuId`).
//! - [`memory`]: sparse guest-physical memory.
//! - [`paging`]: 4-level entries, the page-table builder and the hardware walker.
//! - [`ept`]: EPT views, rights, suppress-#VE and the violation qualification.
//! - [`vcpu`]: the register file, registers as instructions name them, control registers and
//!   per-VCPU VMX state.
//! - [`ve_info`]: the hardware bytes of the #VE information area.
//! - [`cpu`]: the reference CPU (the iced-x86 adapter and its owned instruction type, MMU,
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
pub mod vcpu;
pub mod ve_info;

pub use addr::{Gfn, Gla, Gpa, VcpuId, ViewId};
pub use cpu::{Machine, MachineConfig, Step};
pub use exit::{EptViolation, ExitReason, Outcome};
