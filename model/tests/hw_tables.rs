//! Table-driven tests of the hardware rules in `INTEL-VMX.md` (HW §n) and `VE-SEMANTICS.md`
//! section 1, run through `Machine::step` with real instructions.
//!
//! Every expected value is written down from the spec tables (or derived by hand from the rule
//! they quote); none is obtained by running the code under test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vesim_model::ept::{EptEntry, EptFlags, EptView};
use vesim_model::memory::GuestMemory;
use vesim_model::paging::{
    FrameAllocator, PageFaultErrorCode, PageSize, PageTableBuilder, PteFlags,
};
use vesim_model::vcpu::{Cr0, DescriptorTable, Gpr, Rflags, Vcpu};
use vesim_model::ve_info::VeInfo;
use vesim_model::{EptViolation, Gla, Gpa, Machine, MachineConfig, Outcome, ViewId};

/// Every guest address the tests use.
mod layout {
    /// Guest-physical window for the page tables built by `PageTableBuilder`.
    pub const TABLES_START: u64 = 0x10_0000;
    /// End (exclusive) of the page-table window.
    pub const TABLES_END: u64 = 0x20_0000;
    /// The code page (PML4 index 0, PD index 2).
    pub const CODE_GLA: u64 = 0x40_0000;
    /// Its frame.
    pub const CODE_GPA: u64 = 0x40_0000;
    /// The data page, in PML4 slot 1 so that none of its paging-structure entries is shared
    /// with the code page.
    pub const DATA_GLA: u64 = 0x80_0060_0000;
    /// Its frame (different from the linear address, so GLA and GPA cannot be confused).
    pub const DATA_GPA: u64 = 0x30_0000;
    /// Offset of the accessed qword inside the data page.
    pub const DATA_OFFSET: u64 = 0x238;
    /// The kernel stack page.
    pub const STACK_GLA: u64 = 0x80_0000;
    /// Its frame.
    pub const STACK_GPA: u64 = 0x50_0000;
    /// The initial RSP at CPL 0 (deliberately not 16-byte aligned).
    pub const RSP_INIT: u64 = 0x80_0F37;
    /// The page TSS.RSP0 points into.
    pub const RSP0_GLA: u64 = 0x81_0000;
    /// Its frame.
    pub const RSP0_GPA: u64 = 0x51_0000;
    /// TSS.RSP0 (8-byte aligned, not 16-byte aligned).
    pub const RSP0_INIT: u64 = 0x81_0FF8;
    /// The RSP of the CPL 3 code (never accessed: delivery switches stacks).
    pub const USER_RSP: u64 = 0x7FFF_FFFF_E123;
    /// The IDT page.
    pub const IDT_GLA: u64 = 0x90_0000;
    /// Its frame.
    pub const IDT_GPA: u64 = 0x52_0000;
    /// The #VE handler: canonical, with distinct values in the three gate offset fields. It is
    /// not mapped; a step ends once the handler's address is in RIP.
    pub const HANDLER: u64 = 0xFFFF_8765_4321_0ABC;
    /// The #VE information area (registered by guest-physical address, not mapped).
    pub const INFO_GPA: u64 = 0x54_0000;
    /// A linear address that nothing maps.
    pub const UNMAPPED_GLA: u64 = 0xC0_0F40;
    /// Kernel code and stack selectors.
    pub const KERNEL_CS: u16 = 0x10;
    /// Kernel stack selector.
    pub const KERNEL_SS: u16 = 0x18;
    /// User code selector (RPL 3).
    pub const USER_CS: u16 = 0x33;
    /// User stack selector (RPL 3).
    pub const USER_SS: u16 = 0x2B;
    /// Mask of the address bits of a paging-structure entry.
    pub const ENTRY_ADDR: u64 = 0x000F_FFFF_FFFF_F000;
}
use layout::*;

const R: EptFlags = EptFlags::READ;
const W: EptFlags = EptFlags::WRITE;
const X: EptFlags = EptFlags::EXECUTE;

/// `mov rax, [rdi]`.
const MOV_RAX_FROM_MEM: &[u8] = &[0x48, 0x8B, 0x07];
/// `mov [rdi], rax`.
const MOV_MEM_FROM_RAX: &[u8] = &[0x48, 0x89, 0x07];
/// `lock bts qword [rdi], 0`.
const LOCK_BTS_MEM_0: &[u8] = &[0xF0, 0x48, 0x0F, 0xBA, 0x2F, 0x00];
/// `xchg [rdi], rax`.
const XCHG_MEM_RAX: &[u8] = &[0x48, 0x87, 0x07];
/// `lock cmpxchg [rdi], rcx`.
const LOCK_CMPXCHG_MEM_RCX: &[u8] = &[0xF0, 0x48, 0x0F, 0xB1, 0x0F];
/// `lock or [rdi], rax`.
const LOCK_OR_MEM_RAX: &[u8] = &[0xF0, 0x48, 0x09, 0x07];
/// `nop`.
const NOP: u8 = 0x90;
/// `vmfunc`.
const VMFUNC: &[u8] = &[0x0F, 0x01, 0xD4];
/// `vmcall`.
const VMCALL: &[u8] = &[0x0F, 0x01, 0xC1];

/// The qword at the data offset before any instruction runs.
const DATA_VALUE: u64 = 0x0123_4567_89AB_CDEF;
/// RAX for writes.
const WRITE_VALUE: u64 = 0x1122_3344_5566_7788;
/// The byte the information area is filled with before a test (except the semaphore).
const SENTINEL: u8 = 0xCC;

struct World {
    m: Machine,
    v: Vcpu,
    tables: Vec<Gpa>,
}

fn all_rights() -> EptEntry {
    EptEntry((R | W | X | EptFlags::SUPPRESS_VE).bits())
}

/// Kernel (or user, with `user`) code at CODE_GLA, a writable data page, a kernel stack, a
/// TSS.RSP0 page and an IDT whose gate 20 is a 64-bit interrupt gate to HANDLER. EPT views 0 and
/// 5 map everything RWX with suppress-#VE set, as the untrusted view starts (VE-SEMANTICS 1).
fn world(user: bool, config: MachineConfig) -> World {
    let mut m = Machine::new(config);
    let mut b = PageTableBuilder::new(
        &mut m.mem,
        FrameAllocator::new(Gpa(TABLES_START), Gpa(TABLES_END)),
    )
    .unwrap();
    let u = if user {
        PteFlags::USER
    } else {
        PteFlags::empty()
    };
    let maps = [
        (CODE_GLA, CODE_GPA, u),
        (DATA_GLA, DATA_GPA, PteFlags::WRITABLE | u),
        (STACK_GLA, STACK_GPA, PteFlags::WRITABLE),
        (RSP0_GLA, RSP0_GPA, PteFlags::WRITABLE),
        (IDT_GLA, IDT_GPA, PteFlags::empty()),
    ];
    for (gla, gpa, flags) in maps {
        b.map(&mut m.mem, Gla(gla), Gpa(gpa), PageSize::Size4K, flags)
            .unwrap();
    }
    let view = EptView::new(all_rights());
    m.ept.insert(ViewId(0), view.clone()).unwrap();
    m.ept.insert(ViewId(5), view).unwrap();
    m.mem
        .write(Gpa(IDT_GPA + 20 * 16), &gate(HANDLER, KERNEL_CS, 0x8E));
    m.mem.write_u64(Gpa(DATA_GPA + DATA_OFFSET), DATA_VALUE);
    let mut v = Vcpu::new_long_mode(b.cr3());
    v.rip = CODE_GLA;
    v.set_reg(Gpr::Rsp, RSP_INIT);
    v.idtr = DescriptorTable {
        base: Gla(IDT_GLA),
        limit: 0xFFF,
    };
    v.tss_rsp0 = RSP0_INIT;
    v.rflags = Rflags::FIXED1 | Rflags::IF;
    if user {
        v.cs = USER_CS;
        v.ss = USER_SS;
        v.set_reg(Gpr::Rsp, USER_RSP);
    }
    let tables = b.tables().to_vec();
    let mut w = World { m, v, tables };
    // The code path is already accessed, so that fetching the instruction writes nothing.
    let code_path = entry_gpas(&w.m.mem, w.v.cr3, CODE_GLA);
    set_bits(&mut w.m.mem, &code_path, PteFlags::ACCESSED);
    w
}

/// A 64-bit IDT gate: offset 15:0, selector, IST 0, type/attributes, offset 31:16, offset
/// 63:32, reserved.
fn gate(offset: u64, selector: u16, attributes: u8) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(offset as u16).to_le_bytes());
    g[2..4].copy_from_slice(&selector.to_le_bytes());
    g[4] = 0;
    g[5] = attributes;
    g[6..8].copy_from_slice(&((offset >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((offset >> 32) as u32).to_le_bytes());
    g
}

/// The GPAs of the PML4E, PDPTE, PDE and PTE that translate `gla`, found by reading memory
/// (an independent walk that ignores every flag).
fn entry_gpas(mem: &GuestMemory, cr3: u64, gla: u64) -> [Gpa; 4] {
    let mut out = [Gpa(0); 4];
    let mut table = cr3 & ENTRY_ADDR;
    for (i, level) in (1..=4u32).rev().enumerate() {
        let index = (gla >> (12 + 9 * (level - 1))) & 0x1FF;
        let gpa = Gpa(table + index * 8);
        out[i] = gpa;
        table = mem.read_u64(gpa) & ENTRY_ADDR;
    }
    out
}

fn set_bits(mem: &mut GuestMemory, entries: &[Gpa], bits: PteFlags) {
    for &e in entries {
        let v = mem.read_u64(e);
        mem.write_u64(e, v | bits.bits());
    }
}

fn clear_bits(mem: &mut GuestMemory, entries: &[Gpa], bits: PteFlags) {
    for &e in entries {
        let v = mem.read_u64(e);
        mem.write_u64(e, v & !bits.bits());
    }
}

fn table_bytes(w: &World) -> Vec<Vec<u8>> {
    w.tables
        .iter()
        .map(|t| {
            let mut b = vec![0u8; 4096];
            w.m.mem.read(*t, &mut b);
            b
        })
        .collect()
}

fn page(mem: &GuestMemory, gpa: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    mem.read(Gpa(gpa), &mut b);
    b
}

fn code(w: &mut World, bytes: &[u8]) {
    w.m.mem.write(Gpa(CODE_GPA), bytes);
}

fn set_view_entry(w: &mut World, view: u16, gpa: u64, flags: EptFlags) {
    let gfn = Gpa(gpa).gfn();
    w.m.ept
        .view_mut(ViewId(view))
        .unwrap()
        .set_entry(gfn, EptEntry::new(gfn, flags));
}

fn set_ept(w: &mut World, gpa: u64, flags: EptFlags) {
    set_view_entry(w, 0, gpa, flags);
}

fn run(w: &mut World) -> Outcome {
    w.m.step(&mut w.v).outcome
}

fn exit_violation(o: &Outcome) -> EptViolation {
    match o {
        Outcome::EptViolation {
            violation,
            idt_vectoring: None,
        } => *violation,
        other => panic!("expected an EPT-violation exit outside event delivery, got {other:?}"),
    }
}

/// The guest access a test makes to the data page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Fetch,
}

fn prepare(w: &mut World, op: Op) {
    match op {
        Op::Read => code(w, MOV_RAX_FROM_MEM),
        Op::Write => {
            code(w, MOV_MEM_FROM_RAX);
            w.v.set_reg(Gpr::Rax, WRITE_VALUE);
        }
        Op::Fetch => {
            w.m.mem.write(Gpa(DATA_GPA + DATA_OFFSET), &[NOP; 16]);
            w.v.rip = DATA_GLA + DATA_OFFSET;
        }
    }
    w.v.set_reg(Gpr::Rdi, DATA_GLA + DATA_OFFSET);
}

/// Checks that `op`, prepared by `prepare`, executed with its architectural effect.
fn assert_executed(w: &World, op: Op, o: &Outcome, what: &str) {
    assert_eq!(*o, Outcome::Executed, "{what}");
    match op {
        Op::Read => {
            assert_eq!(w.v.reg(Gpr::Rax), DATA_VALUE, "{what}: read value");
            assert_eq!(w.v.rip, CODE_GLA + 3, "{what}");
        }
        Op::Write => {
            assert_eq!(
                w.m.mem.read_u64(Gpa(DATA_GPA + DATA_OFFSET)),
                WRITE_VALUE,
                "{what}: written value"
            );
            assert_eq!(w.v.rip, CODE_GLA + 3, "{what}");
        }
        Op::Fetch => assert_eq!(w.v.rip, DATA_GLA + DATA_OFFSET + 1, "{what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// HW §9: final-access qualifications (kvm-unit-tests `ept_access_test_*`)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Expect {
    Allowed,
    Qual(u64),
    Misconfig,
}
use Expect::{Allowed, Misconfig, Qual};

#[test]
fn hw_9_kvm_unit_tests_final_access_qualifications() {
    // EPT rights of the data page -> [read, write, fetch], HW §9 table (rwx added: HW §1.3).
    let table: [(&str, EptFlags, [Expect; 3]); 8] = [
        (
            "---",
            EptFlags::empty(),
            [Qual(0x181), Qual(0x182), Qual(0x184)],
        ),
        ("r--", R, [Allowed, Qual(0x18A), Qual(0x18C)]),
        ("rw-", R | W, [Allowed, Allowed, Qual(0x19C)]),
        ("r-x", R | X, [Allowed, Qual(0x1AA), Allowed]),
        ("--x", X, [Qual(0x1A1), Qual(0x1A2), Allowed]),
        ("rwx", R | W | X, [Allowed, Allowed, Allowed]),
        ("-w-", W, [Misconfig, Misconfig, Misconfig]),
        ("-wx", W | X, [Misconfig, Misconfig, Misconfig]),
    ];
    for (name, rights, expect) in table {
        for (op, exp) in [Op::Read, Op::Write, Op::Fetch].into_iter().zip(expect) {
            let what = format!("EPT {name}, {op:?}");
            let mut w = world(false, MachineConfig::default());
            set_ept(&mut w, DATA_GPA, rights);
            prepare(&mut w, op);
            let before = w.v.clone();
            let data_before = page(&w.m.mem, DATA_GPA);
            let o = run(&mut w);
            match exp {
                Allowed => assert_executed(&w, op, &o, &what),
                Qual(q) => {
                    let v = exit_violation(&o);
                    assert_eq!(v.qualification.bits(), q, "{what}: qualification");
                    assert_eq!(v.gpa, Gpa(DATA_GPA + DATA_OFFSET), "{what}: GPA");
                    assert_eq!(v.gla, Gla(DATA_GLA + DATA_OFFSET), "{what}: GLA");
                    assert!(v.convertible, "{what}: suppress-#VE is clear");
                    assert_eq!(w.v, before, "{what}: a violation is fault-like");
                    assert_eq!(page(&w.m.mem, DATA_GPA), data_before, "{what}: no write");
                }
                Misconfig => {
                    assert_eq!(
                        o,
                        Outcome::EptMisconfig {
                            gpa: Gpa(DATA_GPA + DATA_OFFSET)
                        },
                        "{what}"
                    );
                    assert_eq!(w.v, before, "{what}");
                    assert_eq!(page(&w.m.mem, DATA_GPA), data_before, "{what}: no write");
                }
            }
        }
    }
}

#[test]
fn hw_3_read_modify_write_sets_read_and_write_bits() {
    // HW §3 / VE-SEMANTICS 1: a read-modify-write sets bits 0 and 1. r-x -> 0x1AB and
    // r-- -> 0x18B as stated in the brief's table; --- and --x follow from the same rule with
    // bits 3-5 = 0 (not present) and 0b100 (execute-only).
    let instructions: [(&str, &[u8]); 4] = [
        ("lock bts [rdi], 0", LOCK_BTS_MEM_0),
        ("xchg [rdi], rax", XCHG_MEM_RAX),
        ("lock cmpxchg [rdi], rcx (mismatch)", LOCK_CMPXCHG_MEM_RCX),
        ("lock or [rdi], rax", LOCK_OR_MEM_RAX),
    ];
    let table: [(&str, EptFlags, Expect); 6] = [
        ("r-x", R | X, Qual(0x1AB)),
        ("r--", R, Qual(0x18B)),
        ("---", EptFlags::empty(), Qual(0x183)),
        ("--x", X, Qual(0x1A3)),
        ("rw-", R | W, Allowed),
        ("-w-", W, Misconfig),
    ];
    for (iname, bytes) in instructions {
        for (name, rights, exp) in table {
            let what = format!("{iname} on EPT {name}");
            let mut w = world(false, MachineConfig::default());
            set_ept(&mut w, DATA_GPA, rights);
            code(&mut w, bytes);
            w.v.set_reg(Gpr::Rdi, DATA_GLA + DATA_OFFSET);
            // RAX differs from the memory value, so CMPXCHG takes the mismatch path.
            w.v.set_reg(Gpr::Rax, 0x10);
            w.v.set_reg(Gpr::Rcx, 0x20);
            let before = w.v.clone();
            let o = run(&mut w);
            let value = w.m.mem.read_u64(Gpa(DATA_GPA + DATA_OFFSET));
            match exp {
                Qual(q) => {
                    let v = exit_violation(&o);
                    assert_eq!(v.qualification.bits(), q, "{what}");
                    assert_eq!(v.gpa, Gpa(DATA_GPA + DATA_OFFSET), "{what}");
                    assert_eq!(v.gla, Gla(DATA_GLA + DATA_OFFSET), "{what}");
                    assert_eq!(w.v, before, "{what}");
                    assert_eq!(value, DATA_VALUE, "{what}: memory unchanged");
                }
                Misconfig => {
                    assert_eq!(
                        o,
                        Outcome::EptMisconfig {
                            gpa: Gpa(DATA_GPA + DATA_OFFSET)
                        },
                        "{what}"
                    );
                }
                Allowed => {
                    assert_eq!(o, Outcome::Executed, "{what}");
                    assert_eq!(w.v.rip, CODE_GLA + bytes.len() as u64, "{what}");
                    // DATA_VALUE = ...CDEF: bit 0 is already set.
                    let expect_mem = match iname {
                        n if n.starts_with("lock bts") => DATA_VALUE | 1,
                        n if n.starts_with("xchg") => 0x10,
                        n if n.starts_with("lock cmpxchg") => DATA_VALUE,
                        _ => DATA_VALUE | 0x10,
                    };
                    assert_eq!(value, expect_mem, "{what}: memory");
                    if iname.starts_with("xchg") || iname.starts_with("lock cmpxchg") {
                        assert_eq!(w.v.reg(Gpr::Rax), DATA_VALUE, "{what}: RAX");
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HW §4.3 / §4.1: the page-table page table, and no A/D write on a guest #PF
// ---------------------------------------------------------------------------------------------

#[test]
fn hw_4_3_ad_write_on_readonly_table() {
    // EPT rights of the PT page holding the data page's PTE, guest PTE (A, D), op -> result.
    // HW §4.3 table with EPT A/D off.
    let a = PteFlags::ACCESSED;
    let d = PteFlags::DIRTY;
    let none = PteFlags::empty();
    let table: [(&str, EptFlags, PteFlags, Op, Expect); 24] = [
        ("not present", EptFlags::empty(), none, Op::Read, Qual(0x81)),
        (
            "not present",
            EptFlags::empty(),
            a | d,
            Op::Write,
            Qual(0x81),
        ),
        ("not present", EptFlags::empty(), a, Op::Fetch, Qual(0x81)),
        ("R", R, none, Op::Read, Qual(0x8B)),
        ("R", R, none, Op::Write, Qual(0x8B)),
        ("R", R, none, Op::Fetch, Qual(0x8B)),
        ("R", R, a, Op::Read, Allowed),
        ("R", R, a, Op::Fetch, Allowed),
        ("R", R, a, Op::Write, Qual(0x8B)),
        ("R", R, a | d, Op::Read, Allowed),
        ("R", R, a | d, Op::Write, Allowed),
        ("R", R, a | d, Op::Fetch, Allowed),
        ("R+X", R | X, none, Op::Read, Qual(0xAB)),
        ("R+X", R | X, none, Op::Write, Qual(0xAB)),
        ("R+X", R | X, none, Op::Fetch, Qual(0xAB)),
        ("R+X", R | X, a, Op::Read, Allowed),
        ("R+X", R | X, a, Op::Write, Qual(0xAB)),
        ("R+X", R | X, a | d, Op::Write, Allowed),
        ("R+W", R | W, none, Op::Read, Allowed),
        ("R+W", R | W, none, Op::Write, Allowed),
        ("R+W", R | W, a, Op::Write, Allowed),
        ("R+W+X", R | W | X, none, Op::Write, Allowed),
        ("R+W+X", R | W | X, none, Op::Fetch, Allowed),
        ("R+W+X", R | W | X, a | d, Op::Read, Allowed),
    ];
    for (name, rights, ad, op, exp) in table {
        let what = format!("PT page EPT {name}, guest PTE {ad:?}, {op:?}");
        let mut w = world(false, MachineConfig::default());
        let path = entry_gpas(&w.m.mem, w.v.cr3, DATA_GLA);
        let pte = path[3];
        // Upper levels already accessed; the PTE's A/D as the row says.
        set_bits(&mut w.m.mem, &path[..3], PteFlags::ACCESSED);
        clear_bits(&mut w.m.mem, &[pte], a | d);
        set_bits(&mut w.m.mem, &[pte], ad);
        set_ept(&mut w, pte.0, rights);
        prepare(&mut w, op);
        let tables_before = table_bytes(&w);
        let before = w.v.clone();
        let o = run(&mut w);
        match exp {
            Qual(q) => {
                let v = exit_violation(&o);
                assert_eq!(v.qualification.bits(), q, "{what}: qualification");
                assert_eq!(v.qualification.bits() & (1 << 8), 0, "{what}: bit 8");
                assert_eq!(v.gpa, pte, "{what}: GPA is the PTE's");
                assert_eq!(v.gla, Gla(DATA_GLA + DATA_OFFSET), "{what}: GLA translated");
                assert_eq!(w.v, before, "{what}");
                assert_eq!(table_bytes(&w), tables_before, "{what}: no A/D write");
            }
            Allowed => {
                assert_executed(&w, op, &o, &what);
                let want = ad
                    | a
                    | if op == Op::Write {
                        d
                    } else {
                        PteFlags::empty()
                    };
                let got = PteFlags::from_bits_truncate(w.m.mem.read_u64(pte)) & (a | d);
                assert_eq!(got, want, "{what}: PTE A/D after the access");
            }
            Misconfig => unreachable!(),
        }
    }
}

#[test]
fn hw_4_3_ad_write_on_readonly_table_at_each_level() {
    // The entry at `level` has A = 0 and its table page is read-only in EPT: the A write of
    // that entry faults with 0x8B (RD | WR | PERM_R | GLA_VALID), GPA = the entry's GPA.
    for level_index in 0..4 {
        for op in [Op::Read, Op::Write] {
            let what = format!("entry {level_index} (0 = PML4E), {op:?}");
            let mut w = world(false, MachineConfig::default());
            let path = entry_gpas(&w.m.mem, w.v.cr3, DATA_GLA);
            set_bits(&mut w.m.mem, &path, PteFlags::ACCESSED | PteFlags::DIRTY);
            clear_bits(&mut w.m.mem, &[path[level_index]], PteFlags::ACCESSED);
            set_ept(&mut w, path[level_index].0, R);
            prepare(&mut w, op);
            let tables_before = table_bytes(&w);
            let o = run(&mut w);
            let v = exit_violation(&o);
            assert_eq!(v.qualification.bits(), 0x8B, "{what}");
            assert_eq!(v.gpa, path[level_index], "{what}");
            assert_eq!(v.gla, Gla(DATA_GLA + DATA_OFFSET), "{what}");
            assert_eq!(table_bytes(&w), tables_before, "{what}");
        }
    }
}

#[test]
fn hw_4_3_walk_read_of_non_present_table_page_at_each_level() {
    // A paging-structure read is a data read: the page holding the entry not present in EPT
    // gives 0x81 with the entry's GPA; no A/D write happens (the walk did not complete).
    for level_index in 0..4 {
        let what = format!("entry {level_index} (0 = PML4E)");
        let mut w = world(false, MachineConfig::default());
        let path = entry_gpas(&w.m.mem, w.v.cr3, DATA_GLA);
        clear_bits(&mut w.m.mem, &path, PteFlags::ACCESSED | PteFlags::DIRTY);
        if level_index == 0 {
            // The PML4 page also holds the code path; fetch must still work, so test with the
            // data page itself fetched (the fetch walk reads the PML4 first).
            prepare(&mut w, Op::Fetch);
        } else {
            prepare(&mut w, Op::Write);
        }
        w.m.ept
            .view_mut(ViewId(0))
            .unwrap()
            .set_entry(path[level_index].gfn(), EptEntry(0));
        let tables_before = table_bytes(&w);
        let o = run(&mut w);
        let v = exit_violation(&o);
        assert_eq!(v.qualification.bits(), 0x81, "{what}");
        assert_eq!(v.gpa, path[level_index], "{what}");
        assert_eq!(v.gla, Gla(DATA_GLA + DATA_OFFSET), "{what}");
        assert_eq!(table_bytes(&w), tables_before, "{what}: no A/D write");
    }
}

#[test]
fn hw_4_1_upper_level_ad_writes_commit_before_a_faulting_leaf_update() {
    // VE-SEMANTICS 1: A/D writes go top-down and commit one by one; the PTE's write faulting
    // leaves the upper levels' A bits set.
    let mut w = world(false, MachineConfig::default());
    let path = entry_gpas(&w.m.mem, w.v.cr3, DATA_GLA);
    clear_bits(&mut w.m.mem, &path, PteFlags::ACCESSED | PteFlags::DIRTY);
    set_ept(&mut w, path[3].0, R);
    prepare(&mut w, Op::Write);
    let pte_before = w.m.mem.read_u64(path[3]);
    let v = exit_violation(&run(&mut w));
    assert_eq!(v.qualification.bits(), 0x8B);
    assert_eq!(v.gpa, path[3]);
    for e in &path[..3] {
        assert_ne!(w.m.mem.read_u64(*e) & PteFlags::ACCESSED.bits(), 0, "{e:?}");
        assert_eq!(w.m.mem.read_u64(*e) & PteFlags::DIRTY.bits(), 0, "{e:?}");
    }
    assert_eq!(w.m.mem.read_u64(path[3]), pte_before);
}

#[test]
fn hw_4_1_page_fault_performs_no_ad_write() {
    // (user, PTE flags to remove, PDE flags to remove, PTE flags to add, CR0.WP, op,
    //  expected #PF error code). HW §4.1: permission checks precede A/D writes.
    struct Case {
        what: &'static str,
        user_code: bool,
        user_data: bool,
        pte_clear: PteFlags,
        pde_clear: PteFlags,
        pte_set: u64,
        wp: bool,
        op: Op,
        error_code: u32,
    }
    let rw = PteFlags::WRITABLE;
    let p = PteFlags::PRESENT;
    let e = PteFlags::empty();
    let cases = [
        Case {
            what: "user read of a supervisor page",
            user_code: true,
            user_data: false,
            pte_clear: e,
            pde_clear: e,
            pte_set: 0,
            wp: true,
            op: Op::Read,
            error_code: 0b101,
        },
        Case {
            what: "user write of a supervisor page",
            user_code: true,
            user_data: false,
            pte_clear: e,
            pde_clear: e,
            pte_set: 0,
            wp: true,
            op: Op::Write,
            error_code: 0b111,
        },
        Case {
            what: "user write of a user read-only page",
            user_code: true,
            user_data: true,
            pte_clear: rw,
            pde_clear: e,
            pte_set: 0,
            wp: false,
            op: Op::Write,
            error_code: 0b111,
        },
        Case {
            what: "supervisor write of a read-only PTE, CR0.WP = 1",
            user_code: false,
            user_data: false,
            pte_clear: rw,
            pde_clear: e,
            pte_set: 0,
            wp: true,
            op: Op::Write,
            error_code: 0b011,
        },
        Case {
            what: "supervisor write under a read-only PDE, CR0.WP = 1",
            user_code: false,
            user_data: false,
            pte_clear: e,
            pde_clear: rw,
            pte_set: 0,
            wp: true,
            op: Op::Write,
            error_code: 0b011,
        },
        Case {
            what: "not-present PTE, read",
            user_code: false,
            user_data: false,
            pte_clear: p,
            pde_clear: e,
            pte_set: 0,
            wp: true,
            op: Op::Read,
            error_code: 0b000,
        },
        Case {
            what: "not-present PDE, write",
            user_code: false,
            user_data: false,
            pte_clear: e,
            pde_clear: p,
            pte_set: 0,
            wp: true,
            op: Op::Write,
            error_code: 0b010,
        },
        Case {
            what: "reserved bit 51 in the PTE, read",
            user_code: false,
            user_data: false,
            pte_clear: e,
            pde_clear: e,
            pte_set: 1 << 51,
            wp: true,
            op: Op::Read,
            error_code: 0b1001,
        },
        Case {
            what: "fetch from an XD page (NXE = 1)",
            user_code: false,
            user_data: false,
            pte_clear: e,
            pde_clear: e,
            pte_set: PteFlags::NO_EXECUTE.bits(),
            wp: true,
            op: Op::Fetch,
            error_code: 0b1_0001,
        },
    ];
    for c in cases {
        let what = c.what;
        let mut w = world(c.user_code, MachineConfig::default());
        let path = entry_gpas(&w.m.mem, w.v.cr3, DATA_GLA);
        let data_user = if c.user_data {
            PteFlags::USER
        } else {
            PteFlags::empty()
        };
        // Data path: every A and D clear, U/S as the case says.
        clear_bits(
            &mut w.m.mem,
            &path,
            PteFlags::ACCESSED | PteFlags::DIRTY | PteFlags::USER,
        );
        set_bits(&mut w.m.mem, &path, data_user);
        clear_bits(&mut w.m.mem, &path[3..], c.pte_clear);
        clear_bits(&mut w.m.mem, &path[2..3], c.pde_clear);
        let pte = w.m.mem.read_u64(path[3]);
        w.m.mem.write_u64(path[3], pte | c.pte_set);
        w.v.cr0.set(Cr0::WP, c.wp);
        prepare(&mut w, c.op);
        let tables_before = table_bytes(&w);
        let before = w.v.clone();
        let o = run(&mut w);
        match o {
            Outcome::PageFault { error_code, cr2 } => {
                assert_eq!(error_code.bits(), c.error_code, "{what}: error code");
                assert_eq!(cr2, Gla(DATA_GLA + DATA_OFFSET), "{what}: CR2");
            }
            other => panic!("{what}: expected #PF, got {other:?}"),
        }
        assert_eq!(
            table_bytes(&w),
            tables_before,
            "{what}: A/D written on a #PF"
        );
        assert_eq!(w.v, before, "{what}");
        assert_eq!(
            w.m.mem.read_u64(Gpa(DATA_GPA + DATA_OFFSET)),
            if c.op == Op::Fetch {
                u64::from_le_bytes([NOP; 8])
            } else {
                DATA_VALUE
            },
            "{what}"
        );
    }
}

#[test]
fn hw_4_1_wp0_supervisor_write_to_readonly_page_sets_dirty() {
    // HW §4.1: with CR0.WP = 0 a supervisor write to a read-only page is allowed and still
    // sets A and D.
    let mut w = world(false, MachineConfig::default());
    let path = entry_gpas(&w.m.mem, w.v.cr3, DATA_GLA);
    clear_bits(&mut w.m.mem, &path, PteFlags::ACCESSED | PteFlags::DIRTY);
    clear_bits(&mut w.m.mem, &path[3..], PteFlags::WRITABLE);
    w.v.cr0.remove(Cr0::WP);
    prepare(&mut w, Op::Write);
    let o = run(&mut w);
    assert_executed(&w, Op::Write, &o, "WP = 0 write");
    for e in &path {
        assert_ne!(w.m.mem.read_u64(*e) & PteFlags::ACCESSED.bits(), 0, "{e:?}");
    }
    assert_ne!(w.m.mem.read_u64(path[3]) & PteFlags::DIRTY.bits(), 0);
}

// ---------------------------------------------------------------------------------------------
// HW §2.1: the #VE predicate; HW §2.2 the information area; HW §5 and VE-SEMANTICS 1 delivery
// ---------------------------------------------------------------------------------------------

/// A world whose data page is read-only and convertible, with #VE on and an information area
/// filled with SENTINEL except a zero semaphore; the code writes the data page.
fn ve_world(user: bool, config: MachineConfig) -> World {
    let mut w = world(user, config);
    set_ept(&mut w, DATA_GPA, R);
    w.v.ve_enabled = true;
    w.v.ve_info = Some(Gpa(INFO_GPA));
    w.m.mem.write(Gpa(INFO_GPA), &[SENTINEL; 0x28]);
    VeInfo::set_semaphore(&mut w.m.mem, Gpa(INFO_GPA), 0);
    prepare(&mut w, Op::Write);
    w
}

fn info_bytes(w: &World) -> [u8; 0x28] {
    let mut b = [0u8; 0x28];
    w.m.mem.read(Gpa(INFO_GPA), &mut b);
    b
}

/// The violation a write to the read-only convertible data page reports (HW §9: 0x18A).
fn data_write_violation() -> EptViolation {
    EptViolation {
        qualification: vesim_model::ept::EptQualification::from_bits_retain(0x18A),
        gpa: Gpa(DATA_GPA + DATA_OFFSET),
        gla: Gla(DATA_GLA + DATA_OFFSET),
        convertible: true,
    }
}

/// Checks the information area bytes against HW §2.2: reason 48, semaphore 0xFFFFFFFF, the
/// qualification, GLA, GPA, a 2-byte EPTP index, and bytes 0x22.. untouched.
fn assert_info_area(w: &World, qualification: u64, gla: u64, gpa: u64, index: u16) {
    let b = info_bytes(w);
    assert_eq!(&b[0x00..0x04], &48u32.to_le_bytes(), "reason");
    assert_eq!(&b[0x04..0x08], &[0xFF; 4], "semaphore");
    assert_eq!(
        &b[0x08..0x10],
        &qualification.to_le_bytes(),
        "qualification"
    );
    assert_eq!(&b[0x10..0x18], &gla.to_le_bytes(), "GLA");
    assert_eq!(&b[0x18..0x20], &gpa.to_le_bytes(), "GPA");
    assert_eq!(&b[0x20..0x22], &index.to_le_bytes(), "EPTP index");
    assert_eq!(
        &b[0x22..0x28],
        &[SENTINEL; 6],
        "hardware writes 2 bytes of index"
    );
}

fn stack_qword(w: &World, gla_in_page: u64, page_gla: u64, page_gpa: u64) -> u64 {
    w.m.mem.read_u64(Gpa(page_gpa + (gla_in_page - page_gla)))
}

#[test]
fn hw_2_1_convertible_write_delivers_ve() {
    let mut w = ve_world(false, MachineConfig::default());
    w.v.eptp_index = ViewId(5);
    w.m.ept
        .view_mut(ViewId(5))
        .unwrap()
        .set(Gpa(DATA_GPA).gfn(), R);
    w.v.rflags = Rflags::FIXED1 | Rflags::IF | Rflags::CF | Rflags::ZF;
    let before = w.v.clone();
    let o = run(&mut w);
    assert_eq!(o, Outcome::VeDelivered(data_write_violation()));
    assert_info_area(&w, 0x18A, DATA_GLA + DATA_OFFSET, DATA_GPA + DATA_OFFSET, 5);
    // The write did not happen (#VE is a fault).
    assert_eq!(w.m.mem.read_u64(Gpa(DATA_GPA + DATA_OFFSET)), DATA_VALUE);

    // Delivery: gate 20 decides RIP and CS; the frame is at the 16-aligned old RSP.
    assert_eq!(w.v.rip, HANDLER);
    assert_eq!(w.v.cs, KERNEL_CS);
    assert_eq!(w.v.ss, KERNEL_SS, "no CPL change: SS unchanged");
    let aligned = RSP_INIT & !0xF;
    assert_eq!(w.v.reg(Gpr::Rsp), aligned - 40);
    let q = |off: u64| stack_qword(&w, aligned - off, STACK_GLA, STACK_GPA);
    assert_eq!(q(8), u64::from(KERNEL_SS), "SS");
    assert_eq!(q(16), RSP_INIT, "old RSP");
    assert_eq!(
        q(24),
        (before.rflags | Rflags::RF).bits(),
        "RFLAGS with RF set"
    );
    assert_eq!(q(32), u64::from(KERNEL_CS), "CS");
    assert_eq!(q(40), CODE_GLA, "RIP of the faulting instruction");
    assert!(!w.v.rflags.contains(Rflags::IF), "interrupt gate clears IF");
    assert!(!w.v.rflags.contains(Rflags::RF));
    assert!(
        w.v.rflags.contains(Rflags::CF | Rflags::ZF),
        "status flags kept"
    );
    // Only the stack pointer, RIP, CS and RFLAGS changed.
    let mut expect = before.clone();
    expect.rip = HANDLER;
    expect.set_reg(Gpr::Rsp, aligned - 40);
    expect.rflags = w.v.rflags;
    assert_eq!(w.v, expect);
}

#[test]
fn hw_5_ve_from_cpl3_switches_to_tss_rsp0() {
    let mut w = ve_world(true, MachineConfig::default());
    let before = w.v.clone();
    let o = run(&mut w);
    assert_eq!(o, Outcome::VeDelivered(data_write_violation()));
    assert_info_area(&w, 0x18A, DATA_GLA + DATA_OFFSET, DATA_GPA + DATA_OFFSET, 0);
    let aligned = RSP0_INIT & !0xF;
    assert_eq!(w.v.rip, HANDLER);
    assert_eq!(w.v.cs, KERNEL_CS);
    assert_eq!(w.v.cpl(), 0);
    // SDM §6.14.2: on a CPL change in 64-bit mode SS becomes a null selector (RPL = new CPL).
    assert_eq!(w.v.ss, 0);
    assert_eq!(w.v.reg(Gpr::Rsp), aligned - 40);
    let q = |off: u64| stack_qword(&w, aligned - off, RSP0_GLA, RSP0_GPA);
    assert_eq!(q(8), u64::from(USER_SS));
    assert_eq!(q(16), USER_RSP);
    assert_eq!(q(24), (before.rflags | Rflags::RF).bits());
    assert_eq!(q(32), u64::from(USER_CS));
    assert_eq!(q(40), CODE_GLA);
    assert!(!w.v.rflags.contains(Rflags::IF));
}

#[test]
fn hw_5_ve_through_trap_gate_keeps_if() {
    let mut w = ve_world(false, MachineConfig::default());
    w.m.mem
        .write(Gpa(IDT_GPA + 20 * 16), &gate(HANDLER, KERNEL_CS, 0x8F));
    let o = run(&mut w);
    assert_eq!(o, Outcome::VeDelivered(data_write_violation()));
    assert_eq!(w.v.rip, HANDLER);
    assert!(
        w.v.rflags.contains(Rflags::IF),
        "a trap gate leaves IF alone"
    );
}

#[test]
fn hw_1_4_zero_ept_entry_is_convertible() {
    let mut w = ve_world(false, MachineConfig::default());
    w.m.ept
        .view_mut(ViewId(0))
        .unwrap()
        .set_entry(Gpa(DATA_GPA).gfn(), EptEntry(0));
    let o = run(&mut w);
    let v = EptViolation {
        qualification: vesim_model::ept::EptQualification::from_bits_retain(0x182),
        ..data_write_violation()
    };
    assert_eq!(o, Outcome::VeDelivered(v));
    assert_info_area(&w, 0x182, DATA_GLA + DATA_OFFSET, DATA_GPA + DATA_OFFSET, 0);
}

#[test]
fn hw_2_2_information_area_is_written_without_ept_check() {
    // The area is written by physical address: its page being read-only or not present in
    // EPT changes nothing.
    for rights in [EptFlags::empty(), R, R | EptFlags::SUPPRESS_VE] {
        let mut w = ve_world(false, MachineConfig::default());
        set_ept(&mut w, INFO_GPA, rights);
        let o = run(&mut w);
        assert_eq!(
            o,
            Outcome::VeDelivered(data_write_violation()),
            "{rights:?}"
        );
        assert_info_area(&w, 0x18A, DATA_GLA + DATA_OFFSET, DATA_GPA + DATA_OFFSET, 0);
    }
}

/// Runs a case that must not convert: an ordinary exit 48, nothing written, nothing changed.
fn assert_not_converted(mut w: World, what: &str) {
    let before = w.v.clone();
    let info = info_bytes(&w);
    let stack = page(&w.m.mem, STACK_GPA);
    let o = run(&mut w);
    let v = exit_violation(&o);
    assert_eq!(v.qualification.bits(), 0x18A, "{what}");
    assert_eq!(v.gpa, Gpa(DATA_GPA + DATA_OFFSET), "{what}");
    assert_eq!(v.gla, Gla(DATA_GLA + DATA_OFFSET), "{what}");
    assert_eq!(w.v, before, "{what}: VCPU unchanged");
    assert_eq!(info_bytes(&w), info, "{what}: information area untouched");
    assert_eq!(page(&w.m.mem, STACK_GPA), stack, "{what}: nothing pushed");
    assert_eq!(
        w.m.mem.read_u64(Gpa(DATA_GPA + DATA_OFFSET)),
        DATA_VALUE,
        "{what}"
    );
}

#[test]
fn hw_2_1_semaphore_blocks_conversion() {
    for sem in [1u32, 0xFFFF_FFFF, 0x8000_0000] {
        let mut w = ve_world(false, MachineConfig::default());
        VeInfo::set_semaphore(&mut w.m.mem, Gpa(INFO_GPA), sem);
        assert_not_converted(w, &format!("semaphore {sem:#x}"));
    }
}

#[test]
fn hw_2_1_suppress_ve_blocks_conversion() {
    let mut w = ve_world(false, MachineConfig::default());
    set_ept(&mut w, DATA_GPA, R | EptFlags::SUPPRESS_VE);
    let before = w.v.clone();
    let info = info_bytes(&w);
    let o = run(&mut w);
    let v = exit_violation(&o);
    assert_eq!(v.qualification.bits(), 0x18A);
    assert!(!v.convertible);
    assert_eq!(w.v, before);
    assert_eq!(info_bytes(&w), info);
}

#[test]
fn hw_2_1_ve_disabled_exits() {
    let mut w = ve_world(false, MachineConfig::default());
    w.v.ve_enabled = false;
    assert_not_converted(w, "#VE control off");
}

#[test]
fn hw_2_1_no_information_area_exits() {
    let mut w = ve_world(false, MachineConfig::default());
    w.v.ve_info = None;
    assert_not_converted(w, "no information area");
}

#[test]
fn hw_2_3_second_violation_exits_until_the_semaphore_is_cleared() {
    let mut w = ve_world(false, MachineConfig::default());
    let start = w.v.clone();
    assert_eq!(run(&mut w), Outcome::VeDelivered(data_write_violation()));
    // The handler returns to the faulting instruction without clearing +4.
    let stack_after_first = page(&w.m.mem, STACK_GPA);
    w.v = start.clone();
    let info = info_bytes(&w);
    let v = exit_violation(&run(&mut w));
    assert_eq!(v, data_write_violation());
    assert_eq!(info_bytes(&w), info);
    assert_eq!(w.v, start);
    assert_eq!(page(&w.m.mem, STACK_GPA), stack_after_first);
    // Software clears the semaphore: the next violation converts again.
    VeInfo::set_semaphore(&mut w.m.mem, Gpa(INFO_GPA), 0);
    assert_eq!(run(&mut w), Outcome::VeDelivered(data_write_violation()));
}

/// Checks an EPT violation during #VE delivery: exit 48 with IDT-vectoring 20, the area
/// already written, the VCPU unchanged.
fn assert_delivery_violation(mut w: World, what: &str, qual: u64, gla: u64, gpa: u64) {
    let before = w.v.clone();
    let o = run(&mut w);
    match o {
        Outcome::EptViolation {
            violation,
            idt_vectoring: Some(20),
        } => {
            assert_eq!(
                violation.qualification.bits(),
                qual,
                "{what}: qualification"
            );
            assert_eq!(violation.gla, Gla(gla), "{what}: GLA");
            assert_eq!(violation.gpa, Gpa(gpa), "{what}: GPA");
        }
        other => panic!("{what}: expected exit 48 with IDT vectoring 20, got {other:?}"),
    }
    assert_info_area(&w, 0x18A, DATA_GLA + DATA_OFFSET, DATA_GPA + DATA_OFFSET, 0);
    assert_eq!(
        w.v, before,
        "{what}: the VCPU is left at the faulting instruction"
    );
    assert_eq!(
        w.m.mem.read_u64(Gpa(DATA_GPA + DATA_OFFSET)),
        DATA_VALUE,
        "{what}"
    );
}

#[test]
fn hw_2_1_ept_violation_during_delivery_is_not_converted() {
    let gate_gla = IDT_GLA + 20 * 16;
    let gate_gpa = IDT_GPA + 20 * 16;
    let aligned = RSP_INIT & !0xF;
    // SS is pushed first, at aligned - 8 (VE-SEMANTICS 1 push order).
    let ss_gla = aligned - 8;
    let ss_gpa = STACK_GPA + (ss_gla - STACK_GLA);

    // IDT page all-zero in EPT: convertible, but never converted during delivery.
    let mut w = ve_world(false, MachineConfig::default());
    w.m.ept
        .view_mut(ViewId(0))
        .unwrap()
        .set_entry(Gpa(IDT_GPA).gfn(), EptEntry(0));
    assert_delivery_violation(w, "IDT not present", 0x181, gate_gla, gate_gpa);

    // IDT page execute-only (convertible).
    let mut w = ve_world(false, MachineConfig::default());
    set_ept(&mut w, IDT_GPA, X);
    assert_delivery_violation(w, "IDT execute-only", 0x1A1, gate_gla, gate_gpa);

    // Stack page read-only (convertible).
    let mut w = ve_world(false, MachineConfig::default());
    let stack_before = page(&w.m.mem, STACK_GPA);
    set_ept(&mut w, STACK_GPA, R);
    assert_delivery_violation(w, "stack read-only", 0x18A, ss_gla, ss_gpa);
    let mut w2 = ve_world(false, MachineConfig::default());
    set_ept(&mut w2, STACK_GPA, R);
    run(&mut w2);
    assert_eq!(page(&w2.m.mem, STACK_GPA), stack_before, "nothing pushed");

    // Stack page not present (convertible).
    let mut w = ve_world(false, MachineConfig::default());
    set_ept(&mut w, STACK_GPA, EptFlags::empty());
    assert_delivery_violation(w, "stack not present", 0x182, ss_gla, ss_gpa);

    // From CPL 3: the TSS.RSP0 stack page read-only.
    let mut w = ve_world(true, MachineConfig::default());
    set_ept(&mut w, RSP0_GPA, R);
    let ss0 = (RSP0_INIT & !0xF) - 8;
    assert_delivery_violation(
        w,
        "RSP0 stack read-only",
        0x18A,
        ss0,
        RSP0_GPA + (ss0 - RSP0_GLA),
    );
}

#[test]
fn hw_5_page_fault_during_ve_delivery_is_double_fault() {
    // Stack not mapped in the guest page tables.
    let mut w = ve_world(false, MachineConfig::default());
    w.v.set_reg(Gpr::Rsp, UNMAPPED_GLA);
    assert_eq!(run(&mut w), Outcome::DoubleFault, "stack unmapped");
    assert_info_area(&w, 0x18A, DATA_GLA + DATA_OFFSET, DATA_GPA + DATA_OFFSET, 0);

    // IDT not mapped.
    let mut w = ve_world(false, MachineConfig::default());
    w.v.idtr.base = Gla(UNMAPPED_GLA & !0xFFF);
    assert_eq!(run(&mut w), Outcome::DoubleFault, "IDT unmapped");
    assert_info_area(&w, 0x18A, DATA_GLA + DATA_OFFSET, DATA_GPA + DATA_OFFSET, 0);

    // From CPL 3 with TSS.RSP0 unmapped.
    let mut w = ve_world(true, MachineConfig::default());
    w.v.tss_rsp0 = UNMAPPED_GLA;
    assert_eq!(run(&mut w), Outcome::DoubleFault, "RSP0 unmapped");
}

#[test]
fn hw_5_exception_bitmap_ve_exits_after_the_area_is_written() {
    let config = MachineConfig {
        exception_bitmap_ve: true,
        ..MachineConfig::default()
    };
    let mut w = ve_world(false, config);
    let before = w.v.clone();
    let stack = page(&w.m.mem, STACK_GPA);
    let o = run(&mut w);
    assert_eq!(o, Outcome::VeExit(data_write_violation()));
    assert_info_area(&w, 0x18A, DATA_GLA + DATA_OFFSET, DATA_GPA + DATA_OFFSET, 0);
    assert_eq!(
        w.v, before,
        "not delivered: the VCPU is at the faulting instruction"
    );
    assert_eq!(page(&w.m.mem, STACK_GPA), stack);
}

#[test]
fn hw_8_1_eptp_index_reads_zero_erratum() {
    for (erratum, expect) in [(true, 0u16), (false, 5)] {
        let config = MachineConfig {
            eptp_index_reads_zero: erratum,
            ..MachineConfig::default()
        };
        let mut w = ve_world(false, config);
        w.v.eptp_index = ViewId(5);
        set_view_entry(&mut w, 5, DATA_GPA, R);
        let o = run(&mut w);
        assert_eq!(o, Outcome::VeDelivered(data_write_violation()), "{erratum}");
        assert_info_area(
            &w,
            0x18A,
            DATA_GLA + DATA_OFFSET,
            DATA_GPA + DATA_OFFSET,
            expect,
        );
    }
}

#[test]
fn hw_4_4_page_walk_violation_converts_with_bit_8_clear() {
    // A/D write on a read-only, convertible PT page becomes a #VE with 0x8B and the PTE GPA.
    let mut w = ve_world(false, MachineConfig::default());
    set_ept(&mut w, DATA_GPA, R | W | X | EptFlags::SUPPRESS_VE);
    let path = entry_gpas(&w.m.mem, w.v.cr3, DATA_GLA);
    set_bits(&mut w.m.mem, &path[..3], PteFlags::ACCESSED);
    clear_bits(
        &mut w.m.mem,
        &path[3..],
        PteFlags::ACCESSED | PteFlags::DIRTY,
    );
    set_ept(&mut w, path[3].0, R);
    let o = run(&mut w);
    match o {
        Outcome::VeDelivered(v) => {
            assert_eq!(v.qualification.bits(), 0x8B);
            assert_eq!(v.gpa, path[3]);
        }
        other => panic!("expected #VE, got {other:?}"),
    }
    assert_info_area(&w, 0x8B, DATA_GLA + DATA_OFFSET, path[3].0, 0);
}

// ---------------------------------------------------------------------------------------------
// HW §6: VMFUNC leaf 0; HW §7: VMCALL
// ---------------------------------------------------------------------------------------------

/// A world whose code is VMFUNC, with VM functions on, view 3 installed and distinctive
/// registers and flags.
fn vmfunc_world(user: bool) -> World {
    let mut w = world(user, MachineConfig::default());
    let view0 = w.m.ept.view(ViewId(0)).unwrap().clone();
    w.m.ept.insert(ViewId(3), view0).unwrap();
    code(&mut w, VMFUNC);
    w.v.vmfunc_enabled = true;
    for (i, g) in Gpr::ALL.into_iter().enumerate() {
        if g != Gpr::Rsp {
            w.v.set_reg(g, 0x0101_0000_0000_0000 * (i as u64 + 1) + 0x55);
        }
    }
    w.v.rflags = Rflags::FIXED1 | Rflags::IF | Rflags::CF | Rflags::ZF | Rflags::SF | Rflags::OF;
    w
}

fn set_eax_ecx(w: &mut World, eax: u32, ecx: u32) {
    w.v.set_reg(Gpr::Rax, eax as u64);
    w.v.set_reg(Gpr::Rcx, ecx as u64);
}

#[test]
fn hw_6_vmfunc_disabled_is_ud() {
    let mut w = vmfunc_world(false);
    w.v.vmfunc_enabled = false;
    set_eax_ecx(&mut w, 0, 3);
    let before = w.v.clone();
    assert_eq!(run(&mut w), Outcome::InvalidOpcode);
    assert_eq!(w.v, before);
}

#[test]
fn hw_6_vmfunc_eax_out_of_range_is_ud() {
    // #UD outranks the exit (ECX out of range too).
    for (eax, ecx) in [(64u32, 3u32), (0xFFFF_FFFF, 3), (64, 0xFFFF), (100, 7)] {
        let mut w = vmfunc_world(false);
        set_eax_ecx(&mut w, eax, ecx);
        let before = w.v.clone();
        assert_eq!(run(&mut w), Outcome::InvalidOpcode, "EAX {eax:#x}");
        assert_eq!(w.v, before, "EAX {eax:#x}");
    }
}

#[test]
fn hw_6_vmfunc_function_not_enabled_exits() {
    for eax in [1u32, 2, 17, 63] {
        let mut w = vmfunc_world(false);
        set_eax_ecx(&mut w, eax, 3);
        let before = w.v.clone();
        assert_eq!(
            run(&mut w),
            Outcome::VmfuncExit {
                function: eax,
                index: 3
            },
            "EAX {eax}"
        );
        assert_eq!(w.v, before, "fault-like: RIP still at VMFUNC");
    }
}

#[test]
fn hw_6_vmfunc_ecx_out_of_range() {
    for ecx in [512u32, 513, 0xFFFF, 0x1_0000, 0xFFFF_FFFF] {
        let mut w = vmfunc_world(false);
        set_eax_ecx(&mut w, 0, ecx);
        let before = w.v.clone();
        assert_eq!(
            run(&mut w),
            Outcome::VmfuncExit {
                function: 0,
                index: ecx
            },
            "ECX {ecx:#x}"
        );
        assert_eq!(w.v, before, "ECX {ecx:#x}");
    }
}

#[test]
fn hw_6_vmfunc_invalid_list_entry_exits() {
    for ecx in [1u32, 4, 7, 511] {
        let mut w = vmfunc_world(false);
        set_eax_ecx(&mut w, 0, ecx);
        let before = w.v.clone();
        assert_eq!(
            run(&mut w),
            Outcome::VmfuncExit {
                function: 0,
                index: ecx
            },
            "ECX {ecx}"
        );
        assert_eq!(w.v, before);
    }
}

#[test]
fn hw_6_vmfunc_switches_view_and_changes_nothing_else() {
    for (user, rax, rcx, view) in [
        (false, 0u64, 3u64, 3u16),
        (false, 0, 5, 5),
        (false, 0, 0, 0),
        // Only EAX and ECX count: upper halves are ignored.
        (false, 0xFFFF_FFFF_0000_0000, 0xABCD_0000_0000_0003, 3),
        // No CPL check (HW §6).
        (true, 0, 3, 3),
    ] {
        let what = format!("user {user}, RAX {rax:#x}, RCX {rcx:#x}");
        let mut w = vmfunc_world(user);
        w.v.set_reg(Gpr::Rax, rax);
        w.v.set_reg(Gpr::Rcx, rcx);
        let mut expect = w.v.clone();
        let stack = page(&w.m.mem, STACK_GPA);
        let o = run(&mut w);
        assert_eq!(o, Outcome::Executed, "{what}");
        expect.rip = CODE_GLA + 3;
        expect.eptp_index = ViewId(view);
        assert_eq!(w.v, expect, "{what}: only RIP and the EPTP index change");
        assert_eq!(page(&w.m.mem, STACK_GPA), stack, "{what}");
    }
}

#[test]
fn hw_6_vmfunc_new_view_applies_to_later_accesses() {
    // View 3 maps the data page read-only and convertible: after switching, a write converts
    // and the area reports index 3.
    let mut w = vmfunc_world(false);
    set_view_entry(&mut w, 3, DATA_GPA, R);
    set_eax_ecx(&mut w, 0, 3);
    w.v.ve_enabled = true;
    w.v.ve_info = Some(Gpa(INFO_GPA));
    w.m.mem.write(Gpa(INFO_GPA), &[SENTINEL; 0x28]);
    VeInfo::set_semaphore(&mut w.m.mem, Gpa(INFO_GPA), 0);
    w.m.mem.write(Gpa(CODE_GPA + 3), MOV_MEM_FROM_RAX);
    w.v.set_reg(Gpr::Rdi, DATA_GLA + DATA_OFFSET);
    assert_eq!(run(&mut w), Outcome::Executed);
    assert_eq!(w.v.eptp_index, ViewId(3));
    let o = run(&mut w);
    match o {
        Outcome::VeDelivered(v) => assert_eq!(v.qualification.bits(), 0x18A),
        other => panic!("expected #VE in view 3, got {other:?}"),
    }
    assert_info_area(&w, 0x18A, DATA_GLA + DATA_OFFSET, DATA_GPA + DATA_OFFSET, 3);
    let aligned = RSP_INIT & !0xF;
    assert_eq!(
        stack_qword(&w, aligned - 40, STACK_GLA, STACK_GPA),
        CODE_GLA + 3,
        "the faulting RIP is the MOV after the VMFUNC"
    );
}

#[test]
fn hw_7_vmcall_exits_with_rip_unchanged() {
    for user in [false, true] {
        let mut w = vmfunc_world(user);
        code(&mut w, VMCALL);
        let before = w.v.clone();
        assert_eq!(run(&mut w), Outcome::Vmcall, "user {user}");
        assert_eq!(
            w.v, before,
            "user {user}: registers as they are, RIP at VMCALL"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// HW §4.1 / §8.9: the HVMI-observed "A/D written at all levels" walker
// ---------------------------------------------------------------------------------------------

#[test]
fn hw_8_9_ad_writes_all_levels_touches_accessed_upper_levels() {
    // Upper levels already accessed, PTE not: the default walker writes only the PTE; the
    // HVMI-observed walker rewrites every level, so a read-only PML4 page faults with 0x8B
    // at the PML4E. With nothing to set, neither walker writes.
    for (all_levels, pte_accessed, expect_fault) in [
        (false, false, false),
        (true, false, true),
        (true, true, false),
        (false, true, false),
    ] {
        let what = format!("all levels {all_levels}, PTE accessed {pte_accessed}");
        let config = MachineConfig {
            ad_writes_all_levels: all_levels,
            ..MachineConfig::default()
        };
        let mut w = world(false, config);
        let path = entry_gpas(&w.m.mem, w.v.cr3, DATA_GLA);
        set_bits(&mut w.m.mem, &path, PteFlags::ACCESSED);
        if !pte_accessed {
            clear_bits(&mut w.m.mem, &path[3..], PteFlags::ACCESSED);
        }
        set_ept(&mut w, path[0].0, R);
        prepare(&mut w, Op::Read);
        let o = run(&mut w);
        if expect_fault {
            let v = exit_violation(&o);
            assert_eq!(v.qualification.bits(), 0x8B, "{what}");
            assert_eq!(v.gpa, path[0], "{what}");
            assert_eq!(v.gla, Gla(DATA_GLA + DATA_OFFSET), "{what}");
        } else {
            assert_executed(&w, Op::Read, &o, &what);
            assert_ne!(
                w.m.mem.read_u64(path[3]) & PteFlags::ACCESSED.bits(),
                0,
                "{what}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VE-SEMANTICS 1: accesses are made before anything is committed; fetch of a crossing
// instruction; canonical checks
// ---------------------------------------------------------------------------------------------

/// Maps the page after `gla`'s page to `gpa` with `flags` by writing the next PTE of the same
/// page table (both pages share a PT in this layout).
fn map_next_page(w: &mut World, gla: u64, gpa: u64, flags: PteFlags) {
    let pte = entry_gpas(&w.m.mem, w.v.cr3, gla)[3];
    let value = (gpa & ENTRY_ADDR) | (flags | PteFlags::PRESENT).bits();
    w.m.mem.write_u64(Gpa(pte.0 + 8), value);
}

#[test]
fn ve_1_split_write_faults_before_any_byte_is_written() {
    // `mov [rdi], rax` with 4 bytes in a writable page and 4 in a read-only (convertible)
    // one: an EPT violation on the second page, and the first page keeps its bytes.
    let mut w = world(false, MachineConfig::default());
    map_next_page(&mut w, DATA_GLA, DATA_GPA + 0x1000, PteFlags::WRITABLE);
    set_ept(&mut w, DATA_GPA, R | W);
    set_ept(&mut w, DATA_GPA + 0x1000, R);
    code(&mut w, MOV_MEM_FROM_RAX);
    w.v.set_reg(Gpr::Rax, WRITE_VALUE);
    w.v.set_reg(Gpr::Rdi, DATA_GLA + 0xFFC);
    w.m.mem.write_u32(Gpa(DATA_GPA + 0xFFC), 0xAAAA_AAAA);
    let before = w.v.clone();
    let v = exit_violation(&run(&mut w));
    assert_eq!(v.qualification.bits(), 0x18A);
    assert_eq!(v.gpa.gfn(), Gpa(DATA_GPA + 0x1000).gfn());
    assert_eq!(w.m.mem.read_u32(Gpa(DATA_GPA + 0xFFC)), 0xAAAA_AAAA);
    assert_eq!(w.v, before);
}

#[test]
fn ve_1_fetch_reads_the_second_page_only_when_the_instruction_crosses_into_it() {
    // The page after the code page is not mapped. A 1-byte NOP in the last byte executes; an
    // instruction that continues on the next page takes a #PF on the fetch of that page
    // (CR2 = its first byte, error code I/D since NXE = 1), whatever its first bytes are.
    let next = CODE_GLA + 0x1000;
    let crossing: [(&str, &[u8]); 9] = [
        ("palignr mm0, mm1, 8 (0F 3A | 0F C1 08)", &[0x0F, 0x3A]),
        ("mov [rdi], rax (48 | 89 07)", &[0x48]),
        ("vmovdqu [rdi], ymm0 (C5 | FE 7F 07)", &[0xC5]),
        ("vpbroadcastd ymm0, [rdi] (C4 | E2 7D 58 07)", &[0xC4]),
        ("vpbroadcastd ymm0, [rdi] (C4 E2 | 7D 58 07)", &[0xC4, 0xE2]),
        ("vmovdqu32 [rdi], zmm0 (62 | F1 7E 48 7F 07)", &[0x62]),
        ("vmovdqu32 [rdi], zmm0 (62 F1 | 7E 48 7F 07)", &[0x62, 0xF1]),
        (
            "vmovdqu32 [rdi], zmm0 (62 F1 7E | 48 7F 07)",
            &[0x62, 0xF1, 0x7E],
        ),
        (
            "vmovdqu32 [rdi], zmm0 (62 F1 7E 48 | 7F 07)",
            &[0x62, 0xF1, 0x7E, 0x48],
        ),
    ];
    let mut w = world(false, MachineConfig::default());
    w.m.mem.write(Gpa(CODE_GPA + 0xFFF), &[NOP]);
    w.v.rip = CODE_GLA + 0xFFF;
    assert_eq!(run(&mut w), Outcome::Executed, "NOP in the last byte");
    assert_eq!(w.v.rip, next);
    let mut wrong = Vec::new();
    for (what, head) in crossing {
        let mut w = world(false, MachineConfig::default());
        let start = next - head.len() as u64;
        w.m.mem
            .write(Gpa(CODE_GPA + 0x1000 - head.len() as u64), head);
        w.v.rip = start;
        let o = run(&mut w);
        let expect = Outcome::PageFault {
            error_code: PageFaultErrorCode::FETCH,
            cr2: Gla(next),
        };
        if o != expect {
            wrong.push(format!("{what}: {o:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "expected #PF (I/D) at {next:#x} on the second page's fetch:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn ve_1_vex_write_crossing_a_page_reaches_the_ept_check() {
    // `vmovdqu [rdi], ymm0` (C5 FE 7F 07) starting in the last byte of the code page, the
    // next page mapped: the instruction is decodable and writes a read-only (convertible)
    // page, so it faults as hardware would (VE-SEMANTICS 1), with 0x18A.
    let mut w = world(false, MachineConfig::default());
    map_next_page(&mut w, CODE_GLA, CODE_GPA + 0x1000, PteFlags::empty());
    w.m.mem
        .write(Gpa(CODE_GPA + 0xFFF), &[0xC5, 0xFE, 0x7F, 0x07]);
    w.v.rip = CODE_GLA + 0xFFF;
    w.v.set_reg(Gpr::Rdi, DATA_GLA + 0x200);
    set_ept(&mut w, DATA_GPA, R);
    let v = exit_violation(&run(&mut w));
    assert_eq!(v.qualification.bits(), 0x18A);
    assert_eq!(v.gla, Gla(DATA_GLA + 0x200));
}

#[test]
fn hw_4_1_access_straddling_the_canonical_boundary_is_gp_before_paging() {
    // The last canonical page (0x7FFF_FFFF_F000) is not mapped; an 8-byte read at
    // 0x7FFF_FFFF_FFFC ends at a non-canonical byte. The canonical check covers the whole
    // access and precedes paging (SDM Vol. 1 §3.3.7.1; Bochs `read_virtual_qword_64` checks
    // laddr and laddr + 7 before the access), so the result is #GP(0), not #PF, and no A/D
    // bit is written.
    let mut w = world(false, MachineConfig::default());
    code(&mut w, MOV_RAX_FROM_MEM);
    w.v.set_reg(Gpr::Rdi, 0x7FFF_FFFF_FFFC);
    let tables = table_bytes(&w);
    assert_eq!(
        run(&mut w),
        Outcome::GeneralProtection { error_code: 0 },
        "unmapped first page"
    );
    assert_eq!(table_bytes(&w), tables);
}

/// JMP r64 (SDM Vol. 2A, JMP, FF /4 in 64-bit mode): RIP := the register, every other register
/// and RFLAGS unchanged, no memory access; a non-canonical target is #GP(0) with RIP unchanged.
#[test]
fn jmp_r64_sets_rip_and_faults_on_non_canonical_targets() {
    // (encoding, register)
    let cases: [(&[u8], Gpr); 3] = [
        (&[0xFF, 0xE6], Gpr::Rsi),
        (&[0xFF, 0xE0], Gpr::Rax),
        (&[0x41, 0xFF, 0xE7], Gpr::R15),
    ];
    for (bytes, reg) in cases {
        for (target, canonical) in [
            (0xFFFF_F880_0000_2010u64, true),
            (0x0000_7FFF_FFFF_F000, true),
            (0x0000_8000_0000_0000, false),
        ] {
            let mut w = world(false, MachineConfig::default());
            code(&mut w, bytes);
            w.v.set_reg(reg, target);
            let before = w.v.clone();
            let o = run(&mut w);
            if canonical {
                assert_eq!(o, Outcome::Executed, "{bytes:x?} to {target:#x}");
                assert_eq!(w.v.rip, target);
            } else {
                assert_eq!(o, Outcome::GeneralProtection { error_code: 0 });
                assert_eq!(w.v.rip, CODE_GLA);
            }
            assert_eq!(w.v.gpr, before.gpr);
            assert_eq!(w.v.rflags, before.rflags);
        }
    }
}
