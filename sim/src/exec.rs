//! One instruction on a small machine: the engine behind `vesim exec`.
//!
//! The machine is 64-bit kernel mode (CS 0x10, CPL 0), CR0.PG|PE|WP, CR4.PAE,
//! EFER.LME|LMA|NXE, MAXPHYADDR 46. The page tables live in the window
//! [`layout::EXEC_TABLES_START`]..[`layout::EXEC_TABLES_END`]. Each page that holds a memory
//! cell or instruction bytes is mapped at its linear address (present, writable, supervisor,
//! executable) to a frame from [`layout::EXEC_DATA_START`] on, in ascending linear order. EPT
//! view 0 grants RWX to every frame in use, tables included; VM functions are on with the EPTP
//! list {view 0}; #VE is off.

use crate::layout;
use std::collections::{BTreeMap, BTreeSet};
use vesim_model::cpu::decode::{self, Decoded};
use vesim_model::ept::{EptFlags, EptView};
use vesim_model::paging::{FrameAllocator, PageSize, PageTableBuilder, PteFlags};
use vesim_model::vcpu::{Gpr, Rflags, Vcpu};
use vesim_model::{Gla, Gpa, Machine, MachineConfig, Outcome, ViewId};

/// The RFLAGS bits `--rflags` may set.
pub const SETTABLE_RFLAGS: Rflags = Rflags::CF
    .union(Rflags::PF)
    .union(Rflags::AF)
    .union(Rflags::ZF)
    .union(Rflags::SF)
    .union(Rflags::OF)
    .union(Rflags::DF)
    .union(Rflags::IF);

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    /// Instruction bytes (only the first instruction is used).
    pub bytes: Vec<u8>,
    /// Register values; the others are 0.
    pub regs: BTreeMap<Gpr, u64>,
    /// RFLAGS (bit 1 is forced on).
    pub rflags: u64,
    /// 8-byte memory cells set before execution, by linear address.
    pub mem: BTreeMap<u64, u64>,
    /// Where the instruction is.
    pub rip: u64,
}

impl Default for ExecRequest {
    fn default() -> Self {
        ExecRequest {
            bytes: Vec::new(),
            regs: BTreeMap::new(),
            rflags: 0x2,
            mem: BTreeMap::new(),
            rip: layout::EXEC_DEFAULT_RIP,
        }
    }
}

/// Bad requests. Each message is one sentence.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecError {
    /// No bytes.
    #[error("--bytes is empty")]
    NoBytes,
    /// The bytes end inside the instruction.
    #[error("--bytes holds an incomplete instruction")]
    Incomplete,
    /// RIP is not canonical.
    #[error("--rip {0:#x} is not a canonical address")]
    RipNotCanonical(u64),
    /// The instruction would run off the top of the address space.
    #[error("the instruction at --rip {0:#x} runs past the end of the canonical address range")]
    RipWraps(u64),
    /// A memory cell address is not canonical.
    #[error("--mem address {0:#x} is not canonical")]
    MemNotCanonical(u64),
    /// A memory cell address is not 8-aligned.
    #[error("--mem address {0:#x} is not 8-byte aligned")]
    MemMisaligned(u64),
    /// A memory cell overlaps the instruction.
    #[error("--mem cell {0:#x} overlaps the instruction bytes")]
    MemOverlapsCode(u64),
    /// RFLAGS bits outside the settable set.
    #[error("--rflags {0:#x} sets bits other than CF PF AF ZF SF OF DF IF")]
    BadRflags(u64),
    /// Too many pages for the table window (cannot happen with sane input).
    #[error("the page-table window is too small for this many pages")]
    Layout,
}

/// The result of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecReport {
    /// How the step ended.
    pub outcome: Outcome,
    /// Lower-case mnemonic of the decoded instruction.
    pub mnemonic: String,
    /// Intel-syntax text of the instruction.
    pub text: String,
    /// Instruction length.
    pub length: usize,
    /// RIP after the step.
    pub rip: u64,
    /// RFLAGS after the step.
    pub rflags: u64,
    /// The 16 registers after the step.
    pub regs: [u64; 16],
    /// Every --mem cell and every 8-byte cell the instruction wrote, by linear address.
    pub mem: BTreeMap<u64, u64>,
}

struct Setup {
    machine: Machine,
    vcpu: Vcpu,
    frames: BTreeMap<u64, Gpa>,
}

impl Setup {
    fn phys(&self, gla: u64) -> Option<Gpa> {
        self.frames
            .get(&(gla & !0xFFF))
            .map(|f| f.wrapping_add(gla & 0xFFF))
    }
}

fn build(req: &ExecRequest, code: &[u8]) -> Result<Setup, ExecError> {
    let mut pages = BTreeSet::new();
    pages.insert(req.rip & !0xFFF);
    pages.insert((req.rip + code.len() as u64 - 1) & !0xFFF);
    for addr in req.mem.keys() {
        pages.insert(addr & !0xFFF);
    }
    let mut machine = Machine::new(MachineConfig::default());
    let alloc = FrameAllocator::new(layout::EXEC_TABLES_START, layout::EXEC_TABLES_END);
    let mut pt = PageTableBuilder::new(&mut machine.mem, alloc).map_err(|_| ExecError::Layout)?;
    let mut frames = BTreeMap::new();
    let mut next = layout::EXEC_DATA_START;
    for page in pages {
        pt.map(
            &mut machine.mem,
            Gla(page),
            next,
            PageSize::Size4K,
            PteFlags::WRITABLE,
        )
        .map_err(|_| ExecError::Layout)?;
        frames.insert(page, next);
        next = next.wrapping_add(0x1000);
    }
    let mut view = EptView::default();
    let rwx = EptFlags::READ | EptFlags::WRITE | EptFlags::EXECUTE;
    for gpa in pt.tables().iter().chain(frames.values()) {
        view.set(gpa.gfn(), rwx);
    }
    machine
        .ept
        .insert(ViewId(0), view)
        .map_err(|_| ExecError::Layout)?;
    let mut vcpu = Vcpu::new_long_mode(pt.cr3());
    vcpu.vmfunc_enabled = true;
    vcpu.rip = req.rip;
    vcpu.rflags = Rflags::from_bits_retain(req.rflags) | Rflags::FIXED1;
    for (r, v) in &req.regs {
        vcpu.set_reg(*r, *v);
    }
    let setup = Setup {
        machine,
        vcpu,
        frames,
    };
    let mut setup = setup;
    for (i, b) in code.iter().enumerate() {
        let gpa = setup.phys(req.rip + i as u64).ok_or(ExecError::Layout)?;
        setup.machine.mem.write(gpa, &[*b]);
    }
    for (addr, value) in &req.mem {
        let gpa = setup.phys(*addr).ok_or(ExecError::Layout)?;
        setup.machine.mem.write_u64(gpa, *value);
    }
    Ok(setup)
}

/// Validates `req`, builds the machine, runs one step and reports.
pub fn run(req: &ExecRequest) -> Result<ExecReport, ExecError> {
    if req.bytes.is_empty() {
        return Err(ExecError::NoBytes);
    }
    if !Gla(req.rip).is_canonical() {
        return Err(ExecError::RipNotCanonical(req.rip));
    }
    let limit = req.bytes.len().min(decode::MAX_INSTRUCTION_LEN);
    let (length, mnemonic, text) = match decode::describe(&req.bytes[..limit], req.rip) {
        Ok(d) => d,
        Err(Decoded::Incomplete) => return Err(ExecError::Incomplete),
        // Invalid bytes are the CPU's business: they raise #UD. Place what was given (up to
        // 15 bytes) so the fetch sees the same bytes.
        Err(_) => (limit, "(bad)".to_string(), "(bad)".to_string()),
    };
    let end = req.rip.wrapping_add(length as u64 - 1);
    if end < req.rip || !Gla(end).is_canonical() {
        return Err(ExecError::RipWraps(req.rip));
    }
    if req.rflags & !(SETTABLE_RFLAGS | Rflags::FIXED1).bits() != 0 {
        return Err(ExecError::BadRflags(req.rflags));
    }
    for addr in req.mem.keys() {
        if !Gla(*addr).is_canonical() {
            return Err(ExecError::MemNotCanonical(*addr));
        }
        if addr % 8 != 0 {
            return Err(ExecError::MemMisaligned(*addr));
        }
        if *addr <= end && req.rip <= addr + 7 {
            return Err(ExecError::MemOverlapsCode(*addr));
        }
    }
    let code = &req.bytes[..length];
    let mut s = build(req, code)?;
    let step = s.machine.step(&mut s.vcpu);
    let mut cells: BTreeSet<u64> = req.mem.keys().copied().collect();
    for w in &step.writes {
        let first = w.gla.0 & !7;
        let last = w.gla.0.wrapping_add(w.size - 1) & !7;
        cells.insert(first);
        cells.insert(last);
    }
    let mem = cells
        .into_iter()
        .filter_map(|c| s.phys(c).map(|g| (c, s.machine.mem.read_u64(g))))
        .collect();
    Ok(ExecReport {
        outcome: step.outcome,
        mnemonic: step.mnemonic.unwrap_or(mnemonic),
        text,
        length,
        rip: s.vcpu.rip,
        rflags: s.vcpu.rflags.bits(),
        regs: s.vcpu.gpr,
        mem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(bytes: &[u8]) -> ExecRequest {
        ExecRequest {
            bytes: bytes.to_vec(),
            ..ExecRequest::default()
        }
    }

    #[test]
    fn lock_bts_sets_the_bit_and_cf_from_the_old_bit() {
        // lock bts qword ptr [rax], rbx with rbx = 3: bit 3 of [0x10000].
        let mut r = req(&[0xF0, 0x48, 0x0F, 0xAB, 0x18]);
        r.regs.insert(Gpr::Rax, 0x10000);
        r.regs.insert(Gpr::Rbx, 3);
        r.mem.insert(0x10000, 0x8);
        let rep = run(&r).unwrap();
        assert_eq!(rep.outcome, Outcome::Executed);
        assert_eq!(rep.mem[&0x10000], 0x8);
        assert_eq!(rep.rflags & 1, 1, "CF = old bit 3 = 1");
        assert_eq!(rep.rip, 0x40_0005);
    }

    #[test]
    fn unmapped_write_is_a_page_fault_with_write_error_code() {
        let mut r = req(&[0x48, 0x89, 0x18]); // mov [rax], rbx
        r.regs.insert(Gpr::Rax, 0x7000_0000);
        let rep = run(&r).unwrap();
        match rep.outcome {
            Outcome::PageFault { error_code, cr2 } => {
                assert_eq!(error_code.bits(), 0x2, "not present, write, supervisor");
                assert_eq!(cr2, Gla(0x7000_0000));
            }
            o => panic!("unexpected {o:?}"),
        }
    }

    #[test]
    fn bad_requests_are_refused_with_sentences() {
        assert_eq!(run(&req(&[0x48, 0x89])), Err(ExecError::Incomplete));
        let mut r = req(&[0x90]);
        r.mem.insert(0x40_0000, 1);
        assert_eq!(run(&r), Err(ExecError::MemOverlapsCode(0x40_0000)));
        let mut r = req(&[0x90]);
        r.mem.insert(0x1004, 1);
        assert_eq!(run(&r), Err(ExecError::MemMisaligned(0x1004)));
        let mut r = req(&[0x90]);
        r.rflags = 0x102;
        assert_eq!(run(&r), Err(ExecError::BadRflags(0x102)));
        let mut r = req(&[0x90]);
        r.rip = 0x8000_0000_0000;
        assert_eq!(run(&r), Err(ExecError::RipNotCanonical(0x8000_0000_0000)));
    }
}
