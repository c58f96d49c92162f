//! Constants of the spec (HVMI-BEHAVIOURS section C, Intel SDM), written out by hand.

/// VMCALL RDX numbers (C).
pub const NOP: u64 = 0;
pub const BREAK: u64 = 1;
pub const TRACE: u64 = 2;
pub const RAISE_EPT: u64 = 3;
/// Break reasons (C).
pub const BREAK_UNKNOWN_EXIT: u64 = 1;
pub const BREAK_EMULATION_FAILED: u64 = 3;
pub const BREAK_CS_NOT_KERNEL: u64 = 4;
/// VESTATUS values (C).
pub const ST_NOT_SUPPORTED: u64 = 0x8000_0001;
pub const ST_DISASM_ERROR: u64 = 0x8000_0002;
pub const ST_ACCESS_DENIED: u64 = 0x8000_0004;
/// Paging bits (C).
pub const P: u64 = 1;
pub const RW: u64 = 1 << 1;
pub const US: u64 = 1 << 2;
pub const PWT: u64 = 1 << 3;
pub const A: u64 = 1 << 5;
pub const D: u64 = 1 << 6;
pub const PS: u64 = 1 << 7;
pub const XD: u64 = 1 << 63;
/// PFN mask (C).
pub const PFN: u64 = 0x000F_FFFF_FFFF_F000;
/// RFLAGS bits (SDM Vol. 1 §3.4.3).
pub const CF: u64 = 1;
pub const FIXED1: u64 = 1 << 1;
pub const PF: u64 = 1 << 2;
pub const AF: u64 = 1 << 4;
pub const ZF: u64 = 1 << 6;
pub const SF: u64 = 1 << 7;
pub const IF: u64 = 1 << 9;
pub const DF: u64 = 1 << 10;
pub const OF: u64 = 1 << 11;
pub const AC: u64 = 1 << 18;
pub const RF: u64 = 1 << 16;
/// The qualification of a page-walk A/D write to a write-protected (R-X) table page: RD | WR |
/// readable | executable | GLA valid, bit 8 clear (INTEL-VMX.md §4.3, "0xAB").
pub const QUAL_WALK: u64 = 0xAB;
/// The qualification of a plain write to a write-protected (R-X) page, GLA translated (HW §3).
pub const QUAL_WRITE: u64 = 0x1AA;

/// The self-map index of the guest (VE-SEMANTICS section 2, default).
pub const S: u64 = 0x1ED;
