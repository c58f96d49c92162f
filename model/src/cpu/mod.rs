//! The reference CPU: fetch and decode, perform every memory access through paging and EPT,
//! execute the page-table-writing instruction set with exact architectural results, and end
//! each step in exactly one [`Outcome`].
//!
//! - `mmu`: linear accesses (walk, A/D writes, EPT checks).
//! - `dcache`: the invisible decode cache of the fetch.
//! - `decode`: the iced-x86 adapter: the owned instruction type ([`decode::Insn`]), its memory
//!   accesses and its text.
//! - `exec`: the pure semantics of the supported instructions.
//! - `delivery`: IDT event delivery (#VE, #PF).

mod dcache;
pub mod decode;
pub mod delivery;
pub mod exec;
pub mod mmu;

use crate::addr::{Gla, ViewId, PAGE_SIZE};
use crate::ept::Ept;
use crate::exit::{EptViolation, ExitReason, Outcome};
use crate::memory::GuestMemory;
use crate::vcpu::{Cr0, Gpr, Rflags, Vcpu};
use crate::ve_info::{VeInfo, REASON_EPT_VIOLATION, SEMAPHORE_BUSY};
use decode::{Decoded, Insn, MemoryUse, Mnemonic, Operand, MAX_INSTRUCTION_LEN};
use mmu::{AccessKind, Fault};

pub use delivery::{VECTOR_PF, VECTOR_VE};

/// Machine-wide options (VE-SEMANTICS section 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineConfig {
    /// The page walker writes every level whenever it has any A/D bit to set (HW §4.1, §8.9).
    pub ad_writes_all_levels: bool,
    /// Exception-bitmap bit 20: a #VE becomes a VM exit (reason 0) after the area is written.
    pub exception_bitmap_ve: bool,
    /// The Xeon Gold 5118 erratum: the EPTP index written to the #VE area is always 0 (HW §8.1).
    pub eptp_index_reads_zero: bool,
    /// Walk every translation (no invisible translation cache): for checking that the cache
    /// never changes a result.
    pub no_translation_cache: bool,
    /// Decode every fetched instruction (no invisible decode cache, `dcache`): for checking
    /// that the cache never changes a result.
    pub no_decode_cache: bool,
}

/// The machine shared by all VCPUs: guest-physical memory and the EPTP list.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// Guest-physical memory.
    pub mem: GuestMemory,
    /// The EPT views.
    pub ept: Ept,
    /// Options.
    pub config: MachineConfig,
    /// The invisible translation cache (`mmu`): never changes a result.
    pub(crate) tlb: mmu::Tlb,
    /// The invisible decode cache (`dcache`): never changes a result.
    pub(crate) dcache: dcache::DecodeCache,
    /// Buffers a step reuses, so that a step allocates nothing once they have grown.
    scratch: Scratch,
}

/// The per-step lists of [`Machine::step`], kept between steps for their capacity only.
#[derive(Clone, Debug, Default)]
struct Scratch {
    uses: Vec<MemoryUse>,
    planned: Vec<decode::PlannedAccess>,
}

impl Machine {
    /// Marks memory and the EPTP list as what [`Machine::rewind`] returns to (the snapshot of a
    /// reset; see [`GuestMemory::mark`] and [`Ept::mark`]).
    pub fn mark(&mut self) {
        self.mem.mark();
        self.ept.mark();
    }

    /// Returns memory and the EPTP list to the last mark, in time proportional to the frames
    /// and entries changed since. Both bump their generations, so no cached translation
    /// survives.
    pub fn rewind(&mut self) {
        self.mem.rewind();
        self.ept.rewind();
    }
}

impl PartialEq for Machine {
    fn eq(&self, other: &Self) -> bool {
        (&self.mem, &self.ept, &self.config) == (&other.mem, &other.ept, &other.config)
    }
}

impl Eq for Machine {}

/// One linear write an executed instruction made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearWrite {
    /// Linear address.
    pub gla: Gla,
    /// Number of bytes.
    pub size: u64,
}

/// The result of one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// How the step ended.
    pub outcome: Outcome,
    /// Length of the decoded instruction (0 if none was decoded).
    pub length: u8,
    /// The decoder's mnemonic in lower case, if an instruction was decoded.
    pub mnemonic: Option<&'static str>,
    /// The linear write the instruction committed, if it was executed and wrote memory (the
    /// reference CPU's instructions have at most one memory operand).
    pub write: Option<LinearWrite>,
}

/// MSR numbers passed through to the guest (VE-SEMANTICS section 1).
pub mod msr {
    /// IA32_SPEC_CTRL.
    pub const SPEC_CTRL: u32 = 0x48;
    /// IA32_PRED_CMD (write-only).
    pub const PRED_CMD: u32 = 0x49;
    /// IA32_ARCH_CAPABILITIES (read-only).
    pub const ARCH_CAPABILITIES: u32 = 0x10A;
    /// IA32_GS_BASE.
    pub const GS_BASE: u32 = 0xC000_0101;
    /// MDS_NO, bit 5 of IA32_ARCH_CAPABILITIES.
    pub const ARCH_CAP_MDS_NO: u64 = 1 << 5;
}

/// The CPUID values the hypervisor reports (VE-SEMANTICS section 1): leaf 7 EDX advertises
/// MD_CLEAR (10), IBRS/IBPB (26), STIBP (27) and ARCH_CAPABILITIES (29). Returns EAX, EBX,
/// ECX, EDX.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    match (leaf, subleaf) {
        (0, _) => [0x16, 0x756E_6547, 0x6C65_746E, 0x4965_6E69], // "GenuineIntel"
        (7, 0) => [0, 0, 0, (1 << 10) | (1 << 26) | (1 << 27) | (1 << 29)],
        (0x8000_0000, _) => [0x8000_0008, 0, 0, 0],
        (0x8000_0001, _) => [0, 0, 0, (1 << 11) | (1 << 20) | (1 << 26) | (1 << 29)],
        (0x8000_0008, _) => [crate::addr::MAXPHYADDR | (48 << 8), 0, 0, 0],
        _ => [0; 4],
    }
}

impl Machine {
    /// A machine with empty memory and no EPT views.
    pub fn new(config: MachineConfig) -> Self {
        Machine {
            mem: GuestMemory::new(),
            ept: Ept::new(),
            config,
            tlb: mmu::Tlb::default(),
            dcache: dcache::DecodeCache::default(),
            scratch: Scratch::default(),
        }
    }

    /// Turns a fault on an instruction's access into its outcome: #PF, #GP/#SS, EPT
    /// misconfiguration, or an EPT violation that becomes a #VE when HW §2.1 allows it.
    pub fn fault_outcome(&mut self, vcpu: &mut Vcpu, fault: Fault, stack: bool) -> Outcome {
        match fault {
            Fault::NonCanonical if stack => Outcome::StackFault,
            Fault::NonCanonical => Outcome::GeneralProtection { error_code: 0 },
            Fault::Page { error_code, cr2 } => Outcome::PageFault { error_code, cr2 },
            Fault::EptMisconfig { gpa } => Outcome::EptMisconfig { gpa },
            Fault::EptViolation(v) => self.ept_violation(vcpu, v),
        }
    }

    /// The HW §2.1 predicate, outside event delivery: convert to #VE (write the area, then
    /// deliver vector 20 or exit on exception-bitmap bit 20) or exit with reason 48.
    pub fn ept_violation(&mut self, vcpu: &mut Vcpu, v: EptViolation) -> Outcome {
        let Some(area) = vcpu
            .ve_info
            .filter(|_| vcpu.ve_enabled && v.convertible && vcpu.cr0.contains(Cr0::PE))
        else {
            return Outcome::EptViolation {
                violation: v,
                idt_vectoring: None,
            };
        };
        if VeInfo::semaphore(&self.mem, area) != 0 {
            return Outcome::EptViolation {
                violation: v,
                idt_vectoring: None,
            };
        }
        let eptp_index = if self.config.eptp_index_reads_zero {
            ViewId(0)
        } else {
            vcpu.eptp_index
        };
        VeInfo {
            reason: REASON_EPT_VIOLATION,
            semaphore: SEMAPHORE_BUSY,
            qualification: v.qualification,
            gla: v.gla,
            gpa: v.gpa,
            eptp_index,
        }
        .write(&mut self.mem, area);
        if self.config.exception_bitmap_ve {
            return Outcome::VeExit(v);
        }
        match self.deliver_exception(vcpu, VECTOR_VE, None) {
            Ok(()) => Outcome::VeDelivered(v),
            Err(o) => o,
        }
    }

    /// Fetches the bytes of the instruction at RIP (only the bytes the decoder needs: the
    /// second page is fetched only if the instruction crosses into it) and decodes it, with
    /// the memory it uses (into `uses`).
    fn fetch(&mut self, vcpu: &mut Vcpu, uses: &mut Vec<MemoryUse>) -> Result<Insn, Outcome> {
        let rip = Gla(vcpu.rip);
        let mut bytes = [0u8; MAX_INSTRUCTION_LEN];
        let first = ((PAGE_SIZE - rip.page_offset()) as usize).min(MAX_INSTRUCTION_LEN);
        let user = false;
        let g = self
            .translate(vcpu, rip, AccessKind::Fetch, user)
            .map_err(|f| self.fault_outcome(vcpu, f, false))?;
        self.mem.read(g, &mut bytes[..first]);
        match self.decode(&bytes[..first], vcpu.rip, uses) {
            Ok(i) => return Ok(i),
            Err(Decoded::Incomplete) if first != MAX_INSTRUCTION_LEN => {}
            Err(_) => return Err(Outcome::InvalidOpcode),
        }
        let next = rip.wrapping_add(first as u64);
        let g2 = self
            .translate(vcpu, next, AccessKind::Fetch, user)
            .map_err(|f| self.fault_outcome(vcpu, f, false))?;
        self.mem.read(g2, &mut bytes[first..]);
        self.decode(&bytes, vcpu.rip, uses)
            .map_err(|_| Outcome::InvalidOpcode)
    }

    /// [`decode::decode_with_memory`], through the decode cache unless it is off.
    fn decode(
        &mut self,
        bytes: &[u8],
        rip: u64,
        uses: &mut Vec<MemoryUse>,
    ) -> Result<Insn, Decoded> {
        if !self.config.no_decode_cache {
            return self.dcache.decode(bytes, rip, uses);
        }
        let (insn, decoded) = decode::decode_with_memory(bytes, rip)?;
        *uses = decoded;
        Ok(insn)
    }

    /// Runs one instruction on `vcpu`.
    pub fn step(&mut self, vcpu: &mut Vcpu) -> Step {
        let mut step = Step {
            outcome: Outcome::Executed,
            length: 0,
            mnemonic: None,
            write: None,
        };
        if !vcpu.paging_mode_supported() {
            step.outcome = Outcome::Unsupported {
                mnemonic: "paging mode other than 4-level IA-32e".into(),
            };
            return step;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        match self.fetch(vcpu, &mut scratch.uses) {
            Ok(insn) => {
                step.length = insn.len as u8;
                step.mnemonic = Some(insn.name());
                step.outcome = self.execute(vcpu, &insn, &mut scratch, &mut step.write);
            }
            Err(o) => step.outcome = o,
        }
        self.scratch = scratch;
        step
    }

    fn execute(
        &mut self,
        vcpu: &mut Vcpu,
        insn: &Insn,
        scratch: &mut Scratch,
        write: &mut Option<LinearWrite>,
    ) -> Outcome {
        let cpl0 = vcpu.cpl() == 0;
        let unsupported = || Outcome::Unsupported {
            mnemonic: insn.name().to_owned(),
        };
        match insn.mnemonic {
            Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2 => return Outcome::InvalidOpcode,
            Mnemonic::Vmcall => return Outcome::Vmcall,
            Mnemonic::Vmfunc => return self.vmfunc(vcpu, insn.len as u64),
            Mnemonic::Cpuid => return Outcome::VmExit(ExitReason::Cpuid),
            Mnemonic::Hlt if cpl0 => return Outcome::VmExit(ExitReason::Hlt),
            Mnemonic::Rdmsr | Mnemonic::Wrmsr if cpl0 => {
                return self.msr(vcpu, insn.mnemonic == Mnemonic::Wrmsr, insn.len as u64)
            }
            Mnemonic::Hlt | Mnemonic::Rdmsr | Mnemonic::Wrmsr => {
                return Outcome::GeneralProtection { error_code: 0 }
            }
            // JMP r64 (FF /4 with a register operand): RIP := the register; #GP(0) when the
            // target is not canonical (SDM Vol. 2A, JMP).
            Mnemonic::Jmp => {
                if let Some(Operand::Register(r)) = insn.operand(0) {
                    if r.size == 8 {
                        let target = vcpu.reg(r.gpr);
                        if !Gla(target).is_canonical() {
                            return Outcome::GeneralProtection { error_code: 0 };
                        }
                        vcpu.rip = target;
                        vcpu.rflags.remove(Rflags::RF);
                        return Outcome::Executed;
                    }
                }
            }
            _ => {}
        }
        let planned = &mut scratch.planned;
        if decode::planned_accesses_into(insn, &scratch.uses, vcpu, planned).is_err() {
            return unsupported();
        }
        // Every access is translated, in order, before anything is judged or written.
        let mut span = None;
        for p in planned.iter() {
            match self.translate_span(vcpu, p.gla, p.size, p.kind, false) {
                Ok(s) => span = span.or(Some(s)),
                Err(f) => return self.fault_outcome(vcpu, f, p.stack),
            }
        }
        // The reference CPU's set has at most one memory operand, the decoder's first access.
        if planned.len() > 1 {
            return unsupported();
        }
        let first = planned.first().copied();
        let mem_value = match (first, span) {
            (Some(p), Some(s)) if p.size <= 8 => {
                let mut b = [0u8; 8];
                self.read_span(&s, &mut b[..p.size as usize]);
                u64::from_le_bytes(b)
            }
            (Some(_), _) => return unsupported(),
            _ => 0,
        };
        let Ok(fx) = exec::execute(insn, vcpu, mem_value) else {
            return unsupported();
        };
        if let (Some(value), Some(p), Some(s)) = (fx.store, first, span) {
            if p.kind.writes() {
                self.write_span(&s, &value.to_le_bytes()[..p.size as usize]);
                *write = Some(LinearWrite {
                    gla: p.gla,
                    size: p.size,
                });
            }
        }
        vcpu.gpr = fx.gpr;
        vcpu.rflags = (fx.rflags & !Rflags::RF) | Rflags::FIXED1;
        vcpu.rip = insn.next_ip;
        Outcome::Executed
    }

    /// VMFUNC (HW §6) with EAX and ECX as they are: #UD unless VM functions are on and
    /// EAX < 64; exit 59 unless EAX = 0, ECX < 512 and list entry ECX is valid; otherwise
    /// switch view and advance RIP by `len`.
    pub fn vmfunc(&mut self, vcpu: &mut Vcpu, len: u64) -> Outcome {
        let function = vcpu.reg(Gpr::Rax) as u32;
        let index = vcpu.reg(Gpr::Rcx) as u32;
        if !vcpu.vmfunc_enabled || function >= 64 {
            return Outcome::InvalidOpcode;
        }
        if function != 0
            || index >= ViewId::COUNT as u32
            || !self.ept.is_valid(ViewId(index as u16))
        {
            return Outcome::VmfuncExit { function, index };
        }
        vcpu.eptp_index = ViewId(index as u16);
        vcpu.rip = vcpu.rip.wrapping_add(len);
        vcpu.rflags.remove(Rflags::RF);
        Outcome::Executed
    }

    /// RDMSR/WRMSR at CPL 0: the passed-through MSRs are handled here, the others exit.
    fn msr(&mut self, vcpu: &mut Vcpu, write: bool, len: u64) -> Outcome {
        let index = vcpu.reg(Gpr::Rcx) as u32;
        let value = (vcpu.reg(Gpr::Rdx) << 32) | (vcpu.reg(Gpr::Rax) & 0xFFFF_FFFF);
        let gp = Outcome::GeneralProtection { error_code: 0 };
        let read = match (index, write) {
            (msr::SPEC_CTRL, false) => Some(vcpu.spec_ctrl),
            (msr::SPEC_CTRL, true) => {
                vcpu.spec_ctrl = value;
                None
            }
            (msr::PRED_CMD, true) => None,
            (msr::ARCH_CAPABILITIES, false) => Some(msr::ARCH_CAP_MDS_NO),
            (msr::PRED_CMD, false) | (msr::ARCH_CAPABILITIES, true) => return gp,
            (msr::GS_BASE, false) => Some(vcpu.gs_base),
            (msr::GS_BASE, true) => {
                if !Gla(value).is_canonical() {
                    return gp;
                }
                vcpu.gs_base = value;
                None
            }
            (_, false) => return Outcome::VmExit(ExitReason::Rdmsr),
            (_, true) => return Outcome::VmExit(ExitReason::Wrmsr),
        };
        if let Some(v) = read {
            vcpu.set_reg(Gpr::Rax, v & 0xFFFF_FFFF);
            vcpu.set_reg(Gpr::Rdx, v >> 32);
        }
        vcpu.rip = vcpu.rip.wrapping_add(len);
        vcpu.rflags.remove(Rflags::RF);
        Outcome::Executed
    }
}
