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
    if let Some(w) = &step.write {
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
        mnemonic: step.mnemonic.map_or(mnemonic, str::to_owned),
        text,
        length,
        rip: s.vcpu.rip,
        rflags: s.vcpu.rflags.bits(),
        regs: s.vcpu.gpr,
        mem,
    })
}

/// What one instruction leaves behind over one 8-byte memory cell: the fields [`run`]
/// reports that the I2 check compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellRun {
    /// How the step ended.
    pub outcome: Outcome,
    /// Lower-case mnemonic.
    pub mnemonic: String,
    /// RIP after the step.
    pub rip: u64,
    /// RFLAGS after the step.
    pub rflags: u64,
    /// The 16 registers after the step.
    pub regs: [u64; 16],
    /// The cell after the step.
    pub cell: Option<u64>,
}

/// [`run`] of the instruction in `bytes` at `rip` with these registers and RFLAGS and one
/// memory cell (`cell`, holding `value`), reduced to a [`CellRun`].
///
/// The common case, an instruction whose only memory access lies inside the cell, is computed
/// without building a machine: decode (as the fetch does), the planned access, and the
/// reference CPU's pure semantics ([`vesim_model::cpu::exec::execute`]) on the cell's value,
/// which is everything [`run`]'s machine would do for it (its walks cannot fail: the pages are
/// mapped present, writable and supervisor, RWX in EPT, at CPL 0). Anything else (a bad
/// request, another access, an instruction the machine treats before its accesses, one outside
/// the reference set) goes through [`run`] itself, so the result is always [`run`]'s.
pub fn run_cell(
    bytes: &[u8],
    regs: [u64; 16],
    rflags: u64,
    rip: u64,
    cell: u64,
    value: u64,
) -> Result<CellRun, ExecError> {
    if let Some(r) = run_cell_in_place(bytes, regs, rflags, rip, cell, value) {
        return Ok(r);
    }
    run_cell_on_a_machine(bytes, regs, rflags, rip, cell, value)
}

fn run_cell_on_a_machine(
    bytes: &[u8],
    regs: [u64; 16],
    rflags: u64,
    rip: u64,
    cell: u64,
    value: u64,
) -> Result<CellRun, ExecError> {
    let req = ExecRequest {
        bytes: bytes.to_vec(),
        regs: Gpr::ALL.iter().map(|g| (*g, regs[*g as usize])).collect(),
        rflags,
        mem: [(cell, value)].into_iter().collect(),
        rip,
    };
    let r = run(&req)?;
    Ok(CellRun {
        outcome: r.outcome,
        mnemonic: r.mnemonic,
        rip: r.rip,
        rflags: r.rflags,
        regs: r.regs,
        cell: r.mem.get(&cell).copied(),
    })
}

/// The machine-free path of [`run_cell`]; `None` when it does not apply.
fn run_cell_in_place(
    bytes: &[u8],
    regs: [u64; 16],
    rflags: u64,
    rip: u64,
    cell: u64,
    value: u64,
) -> Option<CellRun> {
    use vesim_model::cpu::decode::Mnemonic as M;
    let limit = bytes.len().min(decode::MAX_INSTRUCTION_LEN);
    let (insn, uses) = decode::decode_with_memory(&bytes[..limit], rip).ok()?;
    // The request checks of `run`, all passing.
    let end = rip.wrapping_add(insn.len as u64 - 1);
    let settable = (SETTABLE_RFLAGS | Rflags::FIXED1).bits();
    if !Gla(rip).is_canonical()
        || end < rip
        || !Gla(end).is_canonical()
        || rflags & !settable != 0
        || !Gla(cell).is_canonical()
        || cell % 8 != 0
        || (cell <= end && rip <= cell + 7)
    {
        return None;
    }
    // What `Machine::execute` handles before any memory access.
    if matches!(
        insn.mnemonic,
        M::Ud0
            | M::Ud1
            | M::Ud2
            | M::Vmcall
            | M::Vmfunc
            | M::Cpuid
            | M::Hlt
            | M::Rdmsr
            | M::Wrmsr
            | M::Jmp
    ) {
        return None;
    }
    let mut vcpu = Vcpu::new_long_mode(0);
    vcpu.vmfunc_enabled = true;
    vcpu.rip = rip;
    vcpu.rflags = Rflags::from_bits_retain(rflags) | Rflags::FIXED1;
    vcpu.gpr = regs;
    let planned = decode::planned_accesses(&insn, &uses, &vcpu).ok()?;
    let [p] = planned.as_slice() else {
        return None;
    };
    let offset = p.gla.0.wrapping_sub(cell);
    if offset >= 8 || p.size > 8 - offset {
        return None;
    }
    let (at, size) = (offset as usize, p.size as usize);
    let mut cell_bytes = value.to_le_bytes();
    let mut b = [0u8; 8];
    b[..size].copy_from_slice(&cell_bytes[at..at + size]);
    let fx = vesim_model::cpu::exec::execute(&insn, &vcpu, u64::from_le_bytes(b)).ok()?;
    if let (Some(v), true) = (fx.store, p.kind.writes()) {
        cell_bytes[at..at + size].copy_from_slice(&v.to_le_bytes()[..size]);
    }
    Some(CellRun {
        outcome: Outcome::Executed,
        mnemonic: insn.name().to_owned(),
        rip: insn.next_ip,
        rflags: ((fx.rflags & !Rflags::RF) | Rflags::FIXED1).bits(),
        regs: fx.gpr,
        cell: Some(u64::from_le_bytes(cell_bytes)),
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

    /// The machine-free path of `run_cell` gives what `run` on a machine gives, wherever it
    /// applies: page-table-write forms with and without LOCK, REX and operand-size prefixes,
    /// addresses at and around the cell, any flags, and any bytes at all.
    mod cell {
        use super::super::*;
        use proptest::prelude::*;

        const CELL: u64 = 0xFFFF_8000_0123_4560;
        const RIP: u64 = 0xFFFF_8000_0040_0000;

        fn code() -> impl Strategy<Value = Vec<u8>> {
            let op = prop_oneof![
                Just(vec![0x89]),
                Just(vec![0x88]),
                Just(vec![0x87]),
                Just(vec![0x09]),
                Just(vec![0x21]),
                Just(vec![0x31]),
                Just(vec![0x01]),
                Just(vec![0x0F, 0xB1]),
                Just(vec![0x0F, 0xAB]),
                Just(vec![0x0F, 0xB3]),
                Just(vec![0x0F, 0xBB]),
                Just(vec![0x0F, 0xBA]),
                Just(vec![0x0F, 0xC1]),
                Just(vec![0x81]),
                Just(vec![0x83]),
                Just(vec![0xC7]),
                Just(vec![0x8B]),
            ];
            let form = (
                proptest::sample::subsequence(vec![0xF0u8, 0x66, 0x48], 0..=3),
                op,
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..6),
            )
                .prop_map(|(prefixes, op, modrm, rest)| {
                    let mut b = prefixes;
                    b.extend(op);
                    b.push(modrm);
                    b.extend(rest);
                    b
                });
            prop_oneof![3 => form, 1 => proptest::collection::vec(any::<u8>(), 1..16)]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn the_in_place_path_agrees_with_a_machine(
                bytes in code(),
                regs in proptest::array::uniform16(prop_oneof![
                    Just(CELL),
                    (0u64..16).prop_map(|d| CELL.wrapping_add(d).wrapping_sub(8)),
                    0u64..128,
                    any::<u64>(),
                ]),
                rflags in prop_oneof![3 => (0u64..0x1000).prop_map(|f| f & 0xED5 | 2), 1 => any::<u64>()],
                value in any::<u64>(),
            ) {
                let machine = run_cell_on_a_machine(&bytes, regs, rflags, RIP, CELL, value);
                if let Some(fast) = run_cell_in_place(&bytes, regs, rflags, RIP, CELL, value) {
                    prop_assert_eq!(Ok(fast), machine);
                }
            }
        }

        /// The in-place path does apply to the page-table-write forms (the property above
        /// would hold trivially if it never did).
        #[test]
        fn the_in_place_path_applies_to_page_table_writes() {
            let mut regs = [0u64; 16];
            regs[Gpr::Rdi as usize] = CELL;
            regs[Gpr::Rax as usize] = 0x8000_0000_1234_5067;
            for bytes in [
                &[0x48, 0x89, 0x07][..],
                &[0xF0, 0x48, 0x0F, 0xB1, 0x0F],
                &[0xF0, 0x48, 0x31, 0x07],
            ] {
                let fast = run_cell_in_place(bytes, regs, 0x2, RIP, CELL, 0x1000_0067);
                assert!(fast.is_some(), "{bytes:x?}");
                assert_eq!(
                    fast.map(Ok),
                    Some(run_cell_on_a_machine(
                        bytes,
                        regs,
                        0x2,
                        RIP,
                        CELL,
                        0x1000_0067
                    ))
                );
            }
        }
    }
}
