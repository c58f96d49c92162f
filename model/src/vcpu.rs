//! One virtual CPU: general registers, RIP, RFLAGS, control registers, the VMX controls vesim
//! models per VCPU (EPTP index, #VE information address, #VE and VM-function enables) and the
//! guest structures the agent relies on (IDTR, TSS.RSP0, the 0x50 segment descriptor).
//!
//! Also the registers as instructions name them: [`Register`] (a general-purpose register at
//! an operand size, with the x86-64 read and write width rules) and [`Segment`] (with the
//! segment bases of 64-bit mode).

use crate::addr::{Gla, Gpa, ViewId};
use bitflags::bitflags;

bitflags! {
    /// RFLAGS (architectural bit positions).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Rflags: u64 {
        /// Bit 0: carry.
        const CF = 1 << 0;
        /// Bit 1: reserved, always 1.
        const FIXED1 = 1 << 1;
        /// Bit 2: parity of the low byte of the result.
        const PF = 1 << 2;
        /// Bit 4: auxiliary carry (carry out of bit 3).
        const AF = 1 << 4;
        /// Bit 6: zero.
        const ZF = 1 << 6;
        /// Bit 7: sign.
        const SF = 1 << 7;
        /// Bit 8: trap (single step).
        const TF = 1 << 8;
        /// Bit 9: interrupt enable.
        const IF = 1 << 9;
        /// Bit 10: direction (string instructions decrement when set).
        const DF = 1 << 10;
        /// Bit 11: signed overflow.
        const OF = 1 << 11;
        /// Bits 13:12: I/O privilege level.
        const IOPL = 3 << 12;
        /// Bit 14: nested task.
        const NT = 1 << 14;
        /// Bit 16: resume (suppresses instruction breakpoints; set in the frame of a fault).
        const RF = 1 << 16;
        /// Bit 17: virtual-8086 mode.
        const VM = 1 << 17;
        /// Bit 18: alignment check / SMAP override.
        const AC = 1 << 18;
        /// Bit 19: virtual interrupt flag.
        const VIF = 1 << 19;
        /// Bit 20: virtual interrupt pending.
        const VIP = 1 << 20;
        /// Bit 21: CPUID available.
        const ID = 1 << 21;
    }
}

impl Rflags {
    /// The six arithmetic status flags.
    pub const STATUS: Rflags = Rflags::CF
        .union(Rflags::PF)
        .union(Rflags::AF)
        .union(Rflags::ZF)
        .union(Rflags::SF)
        .union(Rflags::OF);
}

bitflags! {
    /// CR0 bits the model uses.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Cr0: u64 {
        /// Bit 0: protected mode.
        const PE = 1 << 0;
        /// Bit 16: supervisor writes honour read-only pages.
        const WP = 1 << 16;
        /// Bit 31: paging.
        const PG = 1 << 31;
    }
}

bitflags! {
    /// CR4 bits the model uses.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Cr4: u64 {
        /// Bit 5: physical-address extension (required for 4-level paging).
        const PAE = 1 << 5;
        /// Bit 12: 5-level paging (refused by the model).
        const LA57 = 1 << 12;
        /// Bit 20: supervisor-mode execution prevention.
        const SMEP = 1 << 20;
        /// Bit 21: supervisor-mode access prevention.
        const SMAP = 1 << 21;
    }
}

bitflags! {
    /// IA32_EFER bits the model uses.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Efer: u64 {
        /// Bit 8: long mode enable.
        const LME = 1 << 8;
        /// Bit 10: long mode active.
        const LMA = 1 << 10;
        /// Bit 11: execute-disable bit enable.
        const NXE = 1 << 11;
    }
}

/// A general-purpose register, numbered as in the ModRM encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum Gpr {
    Rax = 0,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

impl Gpr {
    /// All 16 registers in encoding order.
    pub const ALL: [Gpr; 16] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];
    /// The lower-case name (`rax` ... `r15`).
    pub const fn name(self) -> &'static str {
        const NAMES: [&str; 16] = [
            "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15",
        ];
        NAMES[self as usize]
    }
    /// Parses a lower-case 64-bit register name.
    pub fn from_name(name: &str) -> Option<Gpr> {
        Gpr::ALL.into_iter().find(|g| g.name() == name)
    }
}

/// A general-purpose register as an instruction names it: which register, how many of its
/// bytes (8, 4, 2 or 1), and for a 1-byte register whether it is bits 15:8 (AH, CH, DH, BH).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Register {
    /// The register.
    pub gpr: Gpr,
    /// Size in bytes.
    pub size: u8,
    /// AH, CH, DH or BH.
    pub high: bool,
}

impl Register {
    /// The value of the register in `gpr`, zero-extended.
    pub fn read(self, gpr: &[u64; 16]) -> u64 {
        let v = gpr[self.gpr as usize];
        match (self.size, self.high) {
            (1, true) => (v >> 8) & 0xFF,
            (1, false) => v & 0xFF,
            (2, _) => v & 0xFFFF,
            (4, _) => v & 0xFFFF_FFFF,
            _ => v,
        }
    }
    /// Writes the register in `gpr` with the x86-64 width rules: 32-bit writes zero-extend,
    /// 8- and 16-bit writes merge.
    pub fn write(self, gpr: &mut [u64; 16], value: u64) {
        let old = gpr[self.gpr as usize];
        gpr[self.gpr as usize] = match (self.size, self.high) {
            (1, true) => (old & !0xFF00) | ((value & 0xFF) << 8),
            (1, false) => (old & !0xFF) | (value & 0xFF),
            (2, _) => (old & !0xFFFF) | (value & 0xFFFF),
            (4, _) => value & 0xFFFF_FFFF,
            _ => value,
        };
    }
}

/// A segment register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Segment {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

/// A descriptor-table register (IDTR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DescriptorTable {
    /// Linear base address.
    pub base: Gla,
    /// Limit in bytes (the last valid offset).
    pub limit: u16,
}

/// The segment descriptor behind selector 0x50, reduced to what LSL reports; the agent
/// derives its CPU index from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SegmentLimit {
    /// The 20-bit limit field.
    pub limit: u32,
    /// The granularity bit: the limit counts 4 KiB units.
    pub granularity: bool,
}

impl SegmentLimit {
    /// The byte-granular limit LSL returns: `limit << 12 | 0xFFF` when G = 1.
    pub const fn lsl(self) -> u32 {
        let l = self.limit & 0xF_FFFF;
        if self.granularity {
            (l << 12) | 0xFFF
        } else {
            l
        }
    }
}

/// The state of one virtual CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vcpu {
    /// RAX ... R15, indexed by [`Gpr`].
    pub gpr: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// Flags register.
    pub rflags: Rflags,
    /// CS selector (CPL = bits 1:0).
    pub cs: u16,
    /// SS selector.
    pub ss: u16,
    /// CR0.
    pub cr0: Cr0,
    /// CR2 (written when a #PF is delivered).
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: Cr4,
    /// IA32_EFER.
    pub efer: Efer,
    /// DR7.
    pub dr7: u64,
    /// MXCSR.
    pub mxcsr: u32,
    /// XMM0 ... XMM15.
    pub xmm: [u128; 16],
    /// FS base.
    pub fs_base: u64,
    /// IA32_GS_BASE (MSR 0xC0000101).
    pub gs_base: u64,
    /// IA32_KERNEL_GS_BASE (MSR 0xC0000102).
    pub kernel_gs_base: u64,
    /// IA32_SPEC_CTRL (MSR 0x48).
    pub spec_ctrl: u64,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// RSP0 of the TSS: the stack used when an event arrives from CPL 3.
    pub tss_rsp0: u64,
    /// The descriptor behind selector 0x50.
    pub seg50: SegmentLimit,
    /// The current EPTP index (the VMCS EPTP-index field).
    pub eptp_index: ViewId,
    /// Guest-physical address of this VCPU's #VE information area, if one is registered.
    pub ve_info: Option<Gpa>,
    /// The "EPT-violation #VE" control (secondary bit 18).
    pub ve_enabled: bool,
    /// The "enable VM functions" control (secondary bit 13), with only leaf 0 enabled.
    pub vmfunc_enabled: bool,
}

impl Default for Vcpu {
    fn default() -> Self {
        Vcpu::new_long_mode(0)
    }
}

impl Vcpu {
    /// A VCPU in 64-bit kernel mode (CS 0x10, CPL 0): CR0.PE|PG|WP, CR4.PAE,
    /// EFER.LME|LMA|NXE, RFLAGS 0x2, with page tables at `cr3`.
    pub fn new_long_mode(cr3: u64) -> Self {
        Vcpu {
            gpr: [0; 16],
            rip: 0,
            rflags: Rflags::FIXED1,
            cs: 0x10,
            ss: 0x18,
            cr0: Cr0::PE | Cr0::PG | Cr0::WP,
            cr2: 0,
            cr3,
            cr4: Cr4::PAE,
            efer: Efer::LME | Efer::LMA | Efer::NXE,
            dr7: 0x400,
            mxcsr: 0x1F80,
            xmm: [0; 16],
            fs_base: 0,
            gs_base: 0,
            kernel_gs_base: 0,
            spec_ctrl: 0,
            idtr: DescriptorTable::default(),
            tss_rsp0: 0,
            seg50: SegmentLimit::default(),
            eptp_index: ViewId(0),
            ve_info: None,
            ve_enabled: false,
            vmfunc_enabled: false,
        }
    }
    /// Current privilege level (CS.RPL).
    pub fn cpl(&self) -> u8 {
        (self.cs & 3) as u8
    }
    /// Reads a register.
    pub fn reg(&self, r: Gpr) -> u64 {
        self.gpr[r as usize]
    }
    /// Writes a register.
    pub fn set_reg(&mut self, r: Gpr, v: u64) {
        self.gpr[r as usize] = v;
    }
    /// Reads a register as an instruction names it (zero-extended).
    pub fn read_register(&self, r: Register) -> u64 {
        r.read(&self.gpr)
    }
    /// The base of a segment in 64-bit mode: FS and GS have theirs, the others are 0.
    pub fn segment_base(&self, s: Segment) -> u64 {
        match s {
            Segment::Fs => self.fs_base,
            Segment::Gs => self.gs_base,
            Segment::Es | Segment::Cs | Segment::Ss | Segment::Ds => 0,
        }
    }
    /// Whether the paging mode is 4-level IA-32e, the only one the model runs.
    pub fn paging_mode_supported(&self) -> bool {
        self.cr0.contains(Cr0::PG | Cr0::PE)
            && self.cr4.contains(Cr4::PAE)
            && !self.cr4.contains(Cr4::LA57)
            && self.efer.contains(Efer::LMA)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsl_scales_the_limit_only_with_g() {
        let table = [
            (
                SegmentLimit {
                    limit: 5,
                    granularity: false,
                },
                5,
            ),
            (
                SegmentLimit {
                    limit: 5,
                    granularity: true,
                },
                0x5FFF,
            ),
            (
                SegmentLimit {
                    limit: 0xF_FFFF,
                    granularity: true,
                },
                0xFFFF_FFFF,
            ),
            (
                SegmentLimit {
                    limit: 0x1F_FFFF,
                    granularity: false,
                },
                0xF_FFFF,
            ),
        ];
        for (seg, lsl) in table {
            assert_eq!(seg.lsl(), lsl, "{seg:?}");
        }
    }

    #[test]
    fn register_widths_read_and_merge_as_x86_64_does() {
        let reg = |gpr, size, high| Register { gpr, size, high };
        let mut gpr = [0u64; 16];
        gpr[Gpr::Rbx as usize] = 0x1122_3344_5566_7788;
        assert_eq!(reg(Gpr::Rbx, 1, true).read(&gpr), 0x77);
        assert_eq!(reg(Gpr::Rbx, 1, false).read(&gpr), 0x88);
        assert_eq!(reg(Gpr::Rbx, 2, false).read(&gpr), 0x7788);
        assert_eq!(reg(Gpr::Rbx, 4, false).read(&gpr), 0x5566_7788);
        assert_eq!(reg(Gpr::Rbx, 8, false).read(&gpr), 0x1122_3344_5566_7788);
        // 8- and 16-bit writes merge, 32-bit writes zero-extend, 64-bit writes replace.
        let cases = [
            (reg(Gpr::Rbx, 1, true), 0x1122_3344_5566_AB88),
            (reg(Gpr::Rbx, 1, false), 0x1122_3344_5566_77AB),
            (reg(Gpr::Rbx, 2, false), 0x1122_3344_5566_90AB),
            (reg(Gpr::Rbx, 4, false), 0x5678_90AB),
            (reg(Gpr::Rbx, 8, false), 0x1234_5678_90AB),
        ];
        for (r, after) in cases {
            let mut g = gpr;
            r.write(&mut g, 0x1234_5678_90AB);
            assert_eq!(g[Gpr::Rbx as usize], after, "{r:?}");
            assert_eq!(g.iter().filter(|v| **v != 0).count(), 1, "{r:?}");
        }
        let mut v = Vcpu::new_long_mode(0);
        v.fs_base = 0xF5;
        v.gs_base = 0x65;
        assert_eq!(v.segment_base(Segment::Fs), 0xF5);
        assert_eq!(v.segment_base(Segment::Gs), 0x65);
        assert_eq!(v.segment_base(Segment::Ds), 0);
    }

    #[test]
    fn gpr_names_round_trip() {
        for g in Gpr::ALL {
            assert_eq!(Gpr::from_name(g.name()), Some(g));
        }
        assert_eq!(Gpr::from_name("eax"), None);
    }
}
