//! One test per MUST behaviour of the #VE agent and the introcore core (HVMI-BEHAVIOURS.md
//! B5–B134) and one test per quirk in both settings (VE-SEMANTICS.md section 2, `hvmi` and
//! `fixed`). Every expected value is worked out by hand from the spec text, the Intel SDM, or
//! the reference CPU (`vesim::exec::run`) run on the same state; none is copied from a run of
//! the code under test.
//!
//! Single-#VE cases go through `vesim::verdict::run`. Cases that need guest memory, the
//! information page, EPT views, the cache or several #VEs build a `World` in which the guest
//! executes real instructions (as `end_to_end.rs` does) or in which a #VE is raised through the
//! model's own EPT-violation path (`Machine::ept_violation`) and the agent is then stepped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use vesim::agent::{rip, AgentOutcome, RejectReason};
use vesim::exec::{ExecReport, ExecRequest};
use vesim::guest::seg50_for_cpu;
use vesim::layout::{self, veinfo};
use vesim::quirks::{Profile, Quirks};
use vesim::verdict::{Verdict, VerdictRequest};
use vesim::world::{Event, World, WorldConfig};
use vesim_model::ept::{EptFlags, EptQualification};
use vesim_model::paging::{self_map_entry_address, PageSize, PteFlags};
use vesim_model::vcpu::{Cr0, Gpr, SegmentLimit};
use vesim_model::{EptViolation, ExitReason, Gla, Gpa, Outcome, ViewId};

// ---------------------------------------------------------------------------------------------
// Constants of the spec (HVMI-BEHAVIOURS section C, Intel SDM), written out by hand.
// ---------------------------------------------------------------------------------------------

/// VMCALL RDX numbers (C).
const NOP: u64 = 0;
const BREAK: u64 = 1;
const TRACE: u64 = 2;
const RAISE_EPT: u64 = 3;
/// Break reasons (C).
const BREAK_UNKNOWN_EXIT: u64 = 1;
const BREAK_EMULATION_FAILED: u64 = 3;
const BREAK_CS_NOT_KERNEL: u64 = 4;
/// VESTATUS values (C).
const ST_NOT_SUPPORTED: u64 = 0x8000_0001;
const ST_DISASM_ERROR: u64 = 0x8000_0002;
const ST_ACCESS_DENIED: u64 = 0x8000_0004;
/// Paging bits (C).
const P: u64 = 1;
const RW: u64 = 1 << 1;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const XD: u64 = 1 << 63;
/// RFLAGS bits (SDM Vol. 1 §3.4.3).
const CF: u64 = 1;
const FIXED1: u64 = 1 << 1;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const IF: u64 = 1 << 9;
const DF: u64 = 1 << 10;
const OF: u64 = 1 << 11;
const AC: u64 = 1 << 18;
const RF: u64 = 1 << 16;
/// The qualification of a page-walk A/D write to a write-protected (R-X) table page: RD | WR |
/// readable | executable | GLA valid, bit 8 clear (INTEL-VMX.md §4.3, "0xAB").
const QUAL_WALK: u64 = 0xAB;
/// The qualification of a plain write to a write-protected (R-X) page, GLA translated (HW §3).
const QUAL_WRITE: u64 = 0x1AA;

/// The self-map index of the guest (VE-SEMANTICS section 2).
const S: u64 = 0x1ED;
/// Where the fixture's code and data pages live (kernel half, PML4 index 0x1F0, away from the
/// guest model's own pages).
const CODE: u64 = 0xFFFF_F800_0030_0000;
const DATA: u64 = 0xFFFF_F800_0040_0000;
/// A user-half page (PML4 index 0x20).
const USER_PAGE: u64 = 0x0000_1000_0000_0000;
/// An entry address for `vesim agent` runs outside every page the guest model uses.
const G: u64 = 0xFFFF_F800_0050_0010;
/// A present, writable, accessed, dirty PTE value (PFN 0x1234).
const OLD: u64 = 0x0000_0000_0123_4063;

// ---------------------------------------------------------------------------------------------
// Helpers: `vesim agent` runs and the reference CPU.
// ---------------------------------------------------------------------------------------------

fn vreq(profile: Profile, bytes: &[u8], regs: &[(Gpr, u64)], old: u64) -> VerdictRequest {
    VerdictRequest {
        bytes: bytes.to_vec(),
        regs: regs.iter().copied().collect(),
        old,
        profile,
        ..VerdictRequest::default()
    }
}

fn verdict(req: &VerdictRequest) -> Verdict {
    vesim::verdict::run(req).expect("the request is valid")
}

fn hvmi(bytes: &[u8], regs: &[(Gpr, u64)], old: u64) -> Verdict {
    verdict(&vreq(Profile::Hvmi, bytes, regs, old))
}

fn fixed(bytes: &[u8], regs: &[(Gpr, u64)], old: u64) -> Verdict {
    verdict(&vreq(Profile::Fixed, bytes, regs, old))
}

fn reg(v: &Verdict, r: Gpr) -> u64 {
    v.regs[r as usize]
}

/// The reference CPU on the same registers, flags and entry (at its linear address).
fn reference(bytes: &[u8], regs: &[(Gpr, u64)], rflags: u64, cells: &[(u64, u64)]) -> ExecReport {
    let r = ExecRequest {
        bytes: bytes.to_vec(),
        regs: regs.iter().copied().collect(),
        rflags,
        mem: cells.iter().copied().collect::<BTreeMap<_, _>>(),
        ..ExecRequest::default()
    };
    let rep = vesim::exec::run(&r).expect("the request is valid");
    assert_eq!(rep.outcome, Outcome::Executed, "reference CPU");
    rep
}

/// A refusal in `hvmi`: one BREAK with EMULATION_FAILED / NOT_SUPPORTED, nothing written, RIP
/// unchanged (B29, B31, B40, Q1).
fn assert_hvmi_refusal(v: &Verdict, reason: RejectReason, old: u64) {
    assert_eq!(v.outcome, Some(AgentOutcome::Rejected), "{v:?}");
    assert_eq!(v.reason, Some(reason), "{v:?}");
    assert_eq!(
        v.vmcalls,
        [(BREAK, BREAK_EMULATION_FAILED, ST_NOT_SUPPORTED)],
        "{v:?}"
    );
    assert_eq!(v.entry, old, "nothing written");
    assert_eq!(v.rip, layout::VERDICT_DEFAULT_RIP, "RIP not advanced");
}

// ---------------------------------------------------------------------------------------------
// Helpers: a world whose guest executes real instructions.
// ---------------------------------------------------------------------------------------------

/// A world with a code page at `CODE`, a data page at `DATA`, and the page-table page that maps
/// `DATA` write-protected and convertible through one monitor on its entry 256 (as `vesim agent`
/// does). Entry k of that table maps `DATA + k * 0x1000`.
struct Fx {
    w: World,
    /// DATA's page-table page.
    pt: Gpa,
    /// CODE's frame.
    code: Gpa,
}

fn config(q: Quirks) -> WorldConfig {
    WorldConfig {
        quirks: q,
        ..WorldConfig::default()
    }
}

fn fx(q: Quirks) -> Fx {
    fx_with(config(q))
}

fn fx_with(c: WorldConfig) -> Fx {
    let mut w = World::new(c).unwrap();
    let code = w
        .guest
        .map_new(&mut w.machine, CODE, PteFlags::empty())
        .unwrap();
    w.guest
        .map_new(&mut w.machine, DATA, PteFlags::WRITABLE)
        .unwrap();
    let pt = w.guest.entry_gpa(&w.machine, DATA, 1).unwrap().page_base();
    w.place_monitor(pt.wrapping_add(256 * 8));
    w.commit_hooks();
    for v in &mut w.vcpus {
        v.rip = CODE;
    }
    Fx { w, pt, code }
}

/// The self-map address of entry k of DATA's page table (the PTE of `DATA + k * 0x1000`).
fn egla(k: u64) -> u64 {
    self_map_entry_address(S, Gla(DATA + k * 0x1000), 1).0
}

impl Fx {
    fn e(&self, k: u64) -> Gpa {
        self.pt.wrapping_add(8 * k)
    }
    fn get(&self, k: u64) -> u64 {
        self.w.machine.mem.read_u64(self.e(k))
    }
    fn set(&mut self, k: u64, v: u64) {
        let e = self.e(k);
        self.w.machine.mem.write_u64(e, v);
    }
    /// Places `bytes` at CODE and points every VCPU at it.
    fn code(&mut self, bytes: &[u8]) {
        self.w.machine.mem.write(self.code, bytes);
        for v in &mut self.w.vcpus {
            v.rip = CODE;
        }
    }
    /// `mov [rax], rbx` on entry k with the new value in RBX.
    fn mov_entry(&mut self, cpu: usize, k: u64, new: u64) {
        self.code(&[0x48, 0x89, 0x18]);
        let v = &mut self.w.vcpus[cpu];
        v.set_reg(Gpr::Rax, egla(k));
        v.set_reg(Gpr::Rbx, new);
    }
}

fn page_of(w: &World, cpu: usize) -> Gpa {
    w.ve_page(cpu).expect("the VCPU has an information page")
}

fn pg(w: &World, cpu: usize, off: u64) -> u64 {
    w.machine.mem.read_u64(page_of(w, cpu).wrapping_add(off))
}

fn pg_set(w: &mut World, cpu: usize, off: u64, v: u64) {
    let g = page_of(w, cpu).wrapping_add(off);
    w.machine.mem.write_u64(g, v);
}

fn agent_at(off: u64) -> u64 {
    layout::AGENT_GVA + off
}

/// Steps VCPU `cpu` until a #VE has been delivered (RIP at the hooked OS handler).
fn deliver(w: &mut World, cpu: usize) {
    let n = w.counters.ve_total;
    for _ in 0..64 {
        if w.counters.ve_total > n {
            return;
        }
        w.step(cpu).unwrap();
    }
    panic!("no #VE on VCPU {cpu}; RIP {:#x}", w.vcpus[cpu].rip);
}

/// Delivers one #VE and runs the agent until it returns.
fn one_ve(w: &mut World, cpu: usize) {
    deliver(w, cpu);
    w.run_agent(cpu, 10_000).unwrap();
}

/// Steps VCPU `cpu` until its RIP is the agent step at `off`.
fn to_step(w: &mut World, cpu: usize, off: u64) {
    for _ in 0..10_000 {
        if w.vcpus[cpu].rip == agent_at(off) {
            return;
        }
        w.step(cpu).unwrap();
    }
    panic!("agent step {off:#x} not reached");
}

/// Steps VCPU `cpu` until RIP is `rip`.
fn run_to(w: &mut World, cpu: usize, rip: u64, steps_max: u64) {
    for _ in 0..steps_max {
        if w.vcpus[cpu].rip == rip {
            return;
        }
        w.step(cpu).unwrap();
    }
    panic!("RIP {rip:#x} not reached; at {:#x}", w.vcpus[cpu].rip);
}

/// Raises an EPT violation on VCPU `cpu` through the model's hardware path (the HW §2.1
/// predicate, the information area, delivery), then runs the agent until it returns.
fn inject(w: &mut World, cpu: usize, qualification: u64, gla: u64, gpa: Gpa) {
    let v = EptViolation {
        qualification: EptQualification::from_bits_retain(qualification),
        gpa,
        gla: Gla(gla),
        convertible: true,
    };
    let o = {
        let World { machine, vcpus, .. } = &mut *w;
        machine.ept_violation(&mut vcpus[cpu], v)
    };
    assert!(matches!(o, Outcome::VeDelivered(_)), "{o:?}");
    w.count_ve(cpu, qualification);
    w.run_agent(cpu, 10_000).unwrap();
}

fn vmcalls(w: &World) -> Vec<(u64, u64, u64)> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Event::Vmcall { rdx, rbx, rcx, .. } => Some((*rdx, *rbx, *rcx)),
            _ => None,
        })
        .collect()
}

fn outcomes(w: &World) -> Vec<(AgentOutcome, Option<RejectReason>)> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Event::Agent {
                outcome, reason, ..
            } => Some((*outcome, *reason)),
            _ => None,
        })
        .collect()
}

fn ves(w: &World) -> Vec<(u64, u64, u64)> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Event::Ve {
                qualification,
                gla,
                gpa,
                ..
            } => Some((*qualification, *gla, *gpa)),
            _ => None,
        })
        .collect()
}

/// Callbacks as (entry, old, new).
fn callbacks(w: &World) -> Vec<(Gpa, u64, u64)> {
    w.intro
        .callbacks
        .iter()
        .map(|c| (c.entry, c.old, c.new))
        .collect()
}

/// The 512 agent locks as 8 words.
fn locks(w: &World) -> [u64; 8] {
    let mut out = [0u64; 8];
    for (i, l) in out.iter_mut().enumerate() {
        *l = w
            .machine
            .mem
            .read_u64(layout::AGENT_GPA.wrapping_add(layout::DATA_LOCKS + 8 * i as u64));
    }
    out
}

fn lock_held(w: &World, index: u64) -> bool {
    locks(w)[(index / 64) as usize] & (1 << (index % 64)) != 0
}

fn set_lock(w: &mut World, index: u64, held: bool) {
    let g = layout::AGENT_GPA.wrapping_add(layout::DATA_LOCKS + (index / 64) * 8);
    let v = w.machine.mem.read_u64(g);
    let bit = 1u64 << (index % 64);
    w.machine
        .mem
        .write_u64(g, if held { v | bit } else { v & !bit });
}

fn untrusted_flags(w: &World, gpa: Gpa) -> EptFlags {
    w.machine
        .ept
        .view(w.intro.untrusted)
        .unwrap()
        .entry(gpa.gfn())
        .flags()
}

fn protected_flags(w: &World, gpa: Gpa) -> EptFlags {
    w.machine
        .ept
        .view(w.intro.protected)
        .unwrap()
        .entry(gpa.gfn())
        .flags()
}

const RWX: EptFlags = EptFlags::READ
    .union(EptFlags::WRITE)
    .union(EptFlags::EXECUTE);

/// The physical address of a guest-linear address in the kernel CR3.
fn phys(w: &World, gla: u64) -> Gpa {
    w.guest.phys(&w.machine, gla).expect("mapped")
}

/// ORs `bits` into every present entry of the table page at `table`.
fn or_present_entries(w: &mut World, table: Gpa, bits: u64) {
    for i in 0..512 {
        let g = table.wrapping_add(8 * i);
        let v = w.machine.mem.read_u64(g);
        if v & P != 0 {
            w.machine.mem.write_u64(g, v | bits);
        }
    }
}

/// Maps `USER_PAGE` (user, writable) and returns the GPAs of its four entries, PML4E first.
fn map_user_page(w: &mut World) -> [Gpa; 4] {
    w.guest
        .map_new(
            &mut w.machine,
            USER_PAGE,
            PteFlags::USER | PteFlags::WRITABLE,
        )
        .unwrap();
    [4, 3, 2, 1].map(|l| w.guest.entry_gpa(&w.machine, USER_PAGE, l).unwrap())
}

/// The entries (PML4E first) of DATA's translation.
fn data_entries(w: &World) -> [Gpa; 4] {
    [4, 3, 2, 1].map(|l| w.guest.entry_gpa(&w.machine, DATA, l).unwrap())
}

fn mem(w: &World, g: Gpa) -> u64 {
    w.machine.mem.read_u64(g)
}

// =============================================================================================
// 1. Entry and exit protocol (B7–B25)
// =============================================================================================

/// The interrupted kernel RSP of VCPU 0 (guest model: stack top - 0x100).
const RSP0: u64 = 0xFFFF_F800_0100_3F00;

/// B7: the main handler starts with the hardware IRET frame on top of the interrupted kernel
/// stack (no error code, no IST): RIP, CS, RFLAGS (RF set: #VE is a fault), RSP, SS.
#[test]
fn b7_iret_frame_on_the_interrupted_stack() {
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, OLD);
    f.w.vcpus[0].rflags = vesim_model::vcpu::Rflags::from_bits_retain(FIXED1 | CF | IF);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::STUB_ENTRY);
    let rsp = f.w.vcpus[0].gpr[4];
    assert_eq!(rsp, RSP0 - 0x28, "five qwords below the 16-aligned RSP");
    let frame: Vec<u64> = (0..5).map(|i| mem(&f.w, phys(&f.w, rsp + 8 * i))).collect();
    assert_eq!(
        frame,
        [CODE, 0x10, FIXED1 | CF | IF | RF, RSP0, 0x18],
        "RIP, CS, RFLAGS, RSP, SS at +0, +8, +0x10, +0x18, +0x20"
    );
}

/// B8: RAX and RCX are pushed on the interrupted stack, then VMFUNC(EAX = 0, ECX = the patched
/// protected index) switches to the protected view.
#[test]
fn b8_vmfunc_to_protected_view_with_patched_index() {
    let mut c = config(Quirks::fixed());
    c.guest.protected_view = ViewId(7);
    let mut f = fx_with(c);
    assert_eq!(
        f.w.machine
            .mem
            .read_u32(layout::AGENT_GPA.wrapping_add(layout::STUB_PROTECTED_INDEX_IMM)),
        7,
        "B87 step 2: the imm32 of MOV ECX is patched"
    );
    f.mov_entry(0, 1, OLD);
    f.w.vcpus[0].set_reg(Gpr::Rcx, 0xC0C0_C0C0);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::STUB_ENTRY);
    let rsp = f.w.vcpus[0].gpr[4];
    assert_eq!(f.w.vcpus[0].eptp_index, ViewId(0), "untrusted before");
    f.w.step(0).unwrap();
    let v = &f.w.vcpus[0];
    assert_eq!(v.eptp_index, ViewId(7));
    assert_eq!(
        (v.reg(Gpr::Rax), v.reg(Gpr::Rcx)),
        (0, 7),
        "EAX = 0, ECX = index"
    );
    assert_eq!(v.gpr[4], rsp - 16);
    assert_eq!(mem(&f.w, phys(&f.w, rsp - 8)), egla(1), "RAX pushed first");
    assert_eq!(mem(&f.w, phys(&f.w, rsp - 16)), 0xC0C0_C0C0, "then RCX");
}

/// B9: RFLAGS is forced to 2, RDX and RBX are pushed, and the interrupted stack reads RBX,
/// RDX, RCX, RAX, RIP, CS, RFLAGS, RSP, SS from OriginalStack up.
#[test]
fn b9_rflags_forced_to_2_and_stack_layout() {
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, OLD);
    let v = &mut f.w.vcpus[0];
    v.set_reg(Gpr::Rcx, 0x1111);
    v.set_reg(Gpr::Rdx, 0x2222);
    let guest_flags = FIXED1 | CF | DF | AC;
    v.rflags = vesim_model::vcpu::Rflags::from_bits_retain(guest_flags);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::STUB_SAVE);
    assert_ne!(
        f.w.vcpus[0].rflags.bits(),
        FIXED1,
        "DF and AC survive delivery"
    );
    f.w.step(0).unwrap();
    assert_eq!(f.w.vcpus[0].rflags.bits(), 2);
    let orig = pg(&f.w, 0, veinfo::ORIGINAL_STACK);
    let slots: Vec<u64> = (0..9)
        .map(|i| mem(&f.w, phys(&f.w, orig + 8 * i)))
        .collect();
    assert_eq!(
        slots,
        [
            OLD,
            0x2222,
            0x1111,
            egla(1),
            CODE,
            0x10,
            guest_flags | RF,
            RSP0,
            0x18
        ]
    );
}

/// B10/B11: the CPU index is ((L & 0x3FF) << 6) | (L >> 14) of LSL(0x50); the CPU map slot of
/// that index holds the VCPU number, whose page is VeCoreVePages + number × 0x1000.
#[test]
fn b10_cpu_index_from_lsl() {
    let mut c = config(Quirks::fixed());
    c.guest.vcpus = 2;
    // L = 0x1C000 -> (0 << 6) | 7 = 7; L = 0xC000 -> 3.
    c.guest.seg50 = Some(vec![
        SegmentLimit {
            limit: 0x1C000,
            granularity: false,
        },
        SegmentLimit {
            limit: 0xC000,
            granularity: false,
        },
    ]);
    let mut f = fx_with(c);
    let map = layout::AGENT_GPA.wrapping_add(layout::AGENT_CPUMAP);
    assert_eq!(f.w.machine.mem.read_u32(map.wrapping_add(4 * 7)), 0);
    assert_eq!(f.w.machine.mem.read_u32(map.wrapping_add(4 * 3)), 1);
    f.mov_entry(1, 1, OLD);
    one_ve(&mut f.w, 1);
    let page1 = layout::AGENT_GPA.wrapping_add(layout::AGENT_VEINFO + 0x1000);
    let page0 = layout::AGENT_GPA.wrapping_add(layout::AGENT_VEINFO);
    assert_eq!(f.w.ve_page(1), Some(page1));
    assert_eq!(mem(&f.w, page1.wrapping_add(veinfo::VE_TOTAL)), 1);
    assert_eq!(mem(&f.w, page0.wrapping_add(veinfo::VE_TOTAL)), 0);
    assert_eq!(mem(&f.w, page1.wrapping_add(veinfo::REGS + 24)), OLD, "RBX");
    assert_eq!(f.get(1), OLD);
    assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 0, 0)]);
}

/// B12: the register save offsets of section C.
#[test]
fn b12_register_save_offsets() {
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, OLD);
    let val = |i: usize| 0x0101_0101_0101_0101u64.wrapping_mul(i as u64 + 1);
    let xmm = |i: usize| 0x0202_0202_0202_0202_0303_0303_0303_0303u128.wrapping_mul(i as u128 + 1);
    let cr3 = f.w.guest.cr3;
    let v = &mut f.w.vcpus[0];
    for i in [1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
        v.gpr[i] = val(i);
    }
    for i in 0..16 {
        v.xmm[i] = xmm(i);
    }
    v.mxcsr = 0x1FA0;
    v.dr7 = 0x455;
    v.rflags = vesim_model::vcpu::Rflags::from_bits_retain(FIXED1 | CF | ZF);
    let (cr0, cr4) = (v.cr0.bits(), v.cr4.bits());
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::STUB_MITIGATE);
    let w = &f.w;
    assert_eq!(pg(w, 0, 0x30), egla(1), "RAX");
    assert_eq!(pg(w, 0, 0x38), val(1), "RCX");
    assert_eq!(pg(w, 0, 0x40), val(2), "RDX");
    assert_eq!(pg(w, 0, 0x48), OLD, "RBX");
    assert_eq!(pg(w, 0, 0x50), RSP0, "RSP from the frame");
    for i in 5..16u64 {
        assert_eq!(pg(w, 0, 0x30 + 8 * i), val(i as usize), "GPR {i}");
    }
    assert_eq!(pg(w, 0, 0xB0), CODE, "RIP");
    assert_eq!(pg(w, 0, 0xB8), 0x10, "CS");
    assert_eq!(pg(w, 0, 0xC0), FIXED1 | CF | ZF | RF, "RFLAGS");
    assert_eq!(pg(w, 0, 0xC8), cr0, "CR0");
    assert_eq!(pg(w, 0, 0xD0), cr3, "CR3");
    assert_eq!(pg(w, 0, 0xD8), cr4, "CR4");
    assert_eq!(pg(w, 0, 0xE0), 0x455, "DR7");
    assert_eq!(pg(w, 0, 0xE8), 0x18, "SS");
    assert_eq!(
        w.machine.mem.read_u32(page_of(w, 0).wrapping_add(0xF0)),
        0x1FA0,
        "MXCSR"
    );
    for i in 0..16u64 {
        let lo = pg(w, 0, 0x100 + 16 * i) as u128;
        let hi = pg(w, 0, 0x108 + 16 * i) as u128;
        assert_eq!(hi << 64 | lo, xmm(i as usize), "XMM{i}");
    }
}

/// B13: OriginalStack (0x208) holds the RSP that points at the pushed RBX; RSP is then loaded
/// from ProtectedStack (0x200), which introcore set to stacks + 0x4000·i + 0x4000 − 16.
#[test]
fn b13_original_and_protected_stack() {
    let mut c = config(Quirks::fixed());
    c.guest.vcpus = 2;
    let mut f = fx_with(c);
    // VCPU 1: AGENT_GVA + VESTACKS (0xFFFFF88000045000) + 0x4000 + 0x3FF0.
    let page1 = f.w.ve_page(1).unwrap();
    assert_eq!(
        mem(&f.w, page1.wrapping_add(veinfo::PROTECTED_STACK)),
        0xFFFF_F880_0004_CFF0
    );
    f.mov_entry(0, 1, OLD);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::STUB_MITIGATE);
    assert_eq!(pg(&f.w, 0, veinfo::PROTECTED_STACK), 0xFFFF_F880_0004_8FF0);
    assert_eq!(f.w.vcpus[0].gpr[4], 0xFFFF_F880_0004_8FF0);
    // The frame at RSP0 - 0x28, then RAX, RCX, RDX, RBX.
    assert_eq!(pg(&f.w, 0, veinfo::ORIGINAL_STACK), RSP0 - 0x28 - 0x20);
}

/// B14 (COST): CPUID leaf 7 is executed (one VM exit) only the first time the agent runs.
#[test]
fn b14_cpuid_exit_only_on_first_ve() {
    let mut f = fx(Quirks::fixed());
    f.code(&[0x48, 0x89, 0x18, 0x48, 0x89, 0x18]);
    f.w.vcpus[0].set_reg(Gpr::Rax, egla(1));
    f.w.vcpus[0].set_reg(Gpr::Rbx, 0x200); // bit 9: irrelevant, no VMCALL
    run_to(&mut f.w, 0, CODE + 6, 2000);
    assert_eq!(f.w.counters.ve_total, 2);
    assert_eq!(f.w.counters.exits.get(&ExitReason::Cpuid.code()), Some(&1));
}

/// B15: with IBRS advertised, every #VE writes 1 to SPEC_CTRL (overwriting the OS value, Q13).
#[test]
fn b15_spec_ctrl_overwritten_with_1() {
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, 0x200);
    f.w.vcpus[0].spec_ctrl = 0x6; // STIBP | SSBD
    one_ve(&mut f.w, 0);
    assert_eq!(f.w.vcpus[0].spec_ctrl, 1);
}

/// B17: after the call RSP = OriginalStack and XMM0..15, MXCSR and RBP..R15 are reloaded from
/// the page; CR and DR registers are not restored.
#[test]
fn b17_restore_reloads_registers_from_the_page() {
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, 0x200);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::STUB_RESTORE);
    let (cr3, dr7) = (f.w.vcpus[0].cr3, f.w.vcpus[0].dr7);
    let w = &mut f.w;
    pg_set(w, 0, veinfo::REGS + 8 * 5, 0xB0B0); // RBP
    pg_set(w, 0, veinfo::REGS + 8 * 12, 0x1212); // R12
    pg_set(w, 0, veinfo::XMM + 16 * 3, 0x3333); // XMM3 low
    pg_set(w, 0, veinfo::XMM + 16 * 3 + 8, 0x4444); // XMM3 high
    pg_set(w, 0, veinfo::MXCSR, 0x1F80 | 0x20);
    pg_set(w, 0, veinfo::CR3, 0xDEAD_0000);
    pg_set(w, 0, veinfo::DR7, 0x4FF);
    w.vcpus[0].gpr[12] = 0x5A5A; // what the C code left
    w.step(0).unwrap();
    let v = &w.vcpus[0];
    assert_eq!(v.gpr[4], pg(w, 0, veinfo::ORIGINAL_STACK));
    assert_eq!((v.gpr[5], v.gpr[12]), (0xB0B0, 0x1212));
    assert_eq!(v.xmm[3], 0x4444u128 << 64 | 0x3333);
    assert_eq!(v.mxcsr, 0x1FA0);
    assert_eq!((v.cr3, v.dr7), (cr3, dr7), "CR/DR not restored");
}

/// B18: RAX/RCX/RDX/RBX go back into their stack slots and RSP/RIP/CS/RFLAGS into the IRET
/// frame, so changes become architectural; SS is not written back.
#[test]
fn b18_write_back_into_the_frame_except_ss() {
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, 0x200);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::STUB_RESTORE);
    let w = &mut f.w;
    for (i, v) in [(0u64, 0xA0u64), (1, 0xC1), (2, 0xD2), (3, 0xB3)] {
        pg_set(w, 0, veinfo::REGS + 8 * i, v);
    }
    pg_set(w, 0, veinfo::REGS + 8 * 4, RSP0 - 0x40);
    pg_set(w, 0, veinfo::RIP, CODE + 0x100);
    pg_set(w, 0, veinfo::RFLAGS, FIXED1 | CF | PF | ZF | RF);
    pg_set(w, 0, veinfo::CS, 0x33);
    pg_set(w, 0, veinfo::SS, 0x2B);
    w.run_agent(0, 1000).unwrap();
    let v = &w.vcpus[0];
    assert_eq!(
        [
            v.reg(Gpr::Rax),
            v.reg(Gpr::Rcx),
            v.reg(Gpr::Rdx),
            v.reg(Gpr::Rbx)
        ],
        [0xA0, 0xC1, 0xD2, 0xB3]
    );
    assert_eq!(v.gpr[4], RSP0 - 0x40);
    assert_eq!(v.rip, CODE + 0x100);
    assert_eq!(v.rflags.bits(), FIXED1 | CF | PF | ZF | RF);
    assert_eq!(v.cs, 0x33);
    assert_eq!(v.ss, 0x18, "SS not written back");
}

/// B19: the exit clears the semaphore (offset 4) and VMFUNCs back to the *patched* untrusted
/// index, not the CPU-reported EPTP index at 0x20 (which the Xeon Gold 5118 erratum reports as
/// 0). The clear happens in the protected view: after the VMFUNC the page has no access, so a
/// successful return with the semaphore 0 shows the order.
#[test]
fn b19_semaphore_cleared_before_vmfunc_back() {
    let mut c = config(Quirks::fixed());
    c.guest.untrusted_view = ViewId(2);
    c.guest.protected_view = ViewId(1);
    c.machine.eptp_index_reads_zero = true;
    let mut f = fx_with(c);
    assert_eq!(
        f.w.machine
            .mem
            .read_u32(layout::AGENT_GPA.wrapping_add(layout::STUB_UNTRUSTED_INDEX_IMM)),
        2
    );
    f.mov_entry(0, 1, OLD);
    deliver(&mut f.w, 0);
    let page = page_of(&f.w, 0);
    assert_eq!(
        f.w.machine.mem.read_u16(page.wrapping_add(0x20)),
        0,
        "erratum"
    );
    to_step(&mut f.w, 0, rip::STUB_EXIT);
    assert_eq!(f.w.machine.mem.read_u32(page.wrapping_add(4)), 0xFFFF_FFFF);
    assert_eq!(f.w.vcpus[0].eptp_index, ViewId(1));
    f.w.step(0).unwrap();
    assert_eq!(f.w.machine.mem.read_u32(page.wrapping_add(4)), 0);
    assert_eq!(f.w.vcpus[0].eptp_index, ViewId(2));
    f.w.run_agent(0, 100).unwrap();
    assert_eq!(f.w.vcpus[0].rip, CODE + 3);
    // Re-armed: the next convertible violation is a #VE again.
    f.mov_entry(0, 2, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(f.w.counters.ve_total, 2);
}

/// B20: the way back depends on the saved CS and IA32_GS_BASE: kernel CS -> IRETQ; user CS
/// with a user GS base -> IRETQ; user CS with a kernel GS base -> SWAPGS (the 24 NOPs of the
/// KiKernelExit slot without KPTI) then IRETQ.
#[test]
fn b20_return_path_by_cs_and_gs_base() {
    const KGS: u64 = 0xFFFF_F800_DEAD_0000;
    const UGS: u64 = 0x0000_7FF0_0000_0000;
    for (cs, gs, swapped) in [(0x10u64, KGS, false), (0x33, UGS, false), (0x33, KGS, true)] {
        let mut f = fx(Quirks::hvmi());
        f.mov_entry(0, 1, OLD);
        deliver(&mut f.w, 0);
        to_step(&mut f.w, 0, rip::STUB_ENTRY);
        let rsp = f.w.vcpus[0].gpr[4];
        let cs_slot = phys(&f.w, rsp + 8);
        f.w.machine.mem.write_u64(cs_slot, cs);
        let other = if gs == KGS { UGS } else { KGS };
        f.w.vcpus[0].gs_base = gs;
        f.w.vcpus[0].kernel_gs_base = other;
        f.w.run_agent(0, 1000).unwrap();
        let v = &f.w.vcpus[0];
        assert_eq!(u64::from(v.cs), cs);
        let expect = if swapped { (other, gs) } else { (gs, other) };
        assert_eq!(
            (v.gs_base, v.kernel_gs_base),
            expect,
            "CS {cs:#x} GS {gs:#x}"
        );
    }
}

/// B25/B127: while the semaphore is non-zero a convertible violation is an ordinary VM exit.
#[test]
fn b25_busy_semaphore_makes_the_violation_an_exit() {
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, OLD);
    let page = page_of(&f.w, 0);
    vesim_model::ve_info::VeInfo::set_semaphore(&mut f.w.machine.mem, page, 0xFFFF_FFFF);
    run_to(&mut f.w, 0, CODE + 3, 10);
    assert_eq!(f.w.counters.ve_total, 0);
    assert_eq!(
        f.w.counters.exits.get(&ExitReason::EptViolation.code()),
        Some(&1)
    );
    assert_eq!(
        f.get(1),
        OLD,
        "introcore performed the write on the exit path"
    );
}

// =============================================================================================
// 2. The handler's decision tree and statistics (B26–B31)
// =============================================================================================

fn raised_byte(w: &World, cpu: usize) -> u8 {
    let mut b = [0u8; 1];
    w.machine
        .mem
        .read(page_of(w, cpu).wrapping_add(veinfo::RAISED), &mut b);
    b[0]
}

/// B26: on entry `Raised` is cleared and `VeTotal` incremented.
#[test]
fn b26_entry_clears_raised_and_counts_total() {
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(raised_byte(&f.w, 0), 1, "the first write was raised");
    f.mov_entry(0, 1, OLD | 0x200); // bit 9 only: irrelevant
    one_ve(&mut f.w, 0);
    assert_eq!(raised_byte(&f.w, 0), 0);
    assert_eq!(pg(&f.w, 0, veinfo::VE_TOTAL), 2);
}

/// B27: an exit reason other than 48 is HvBreak(UNKNOWN_EXIT, 0); nothing else happens and RIP
/// stays (B31).
#[test]
fn b27_unknown_exit_reason_breaks() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut f = fx(q);
        f.mov_entry(0, 1, OLD);
        deliver(&mut f.w, 0);
        to_step(&mut f.w, 0, rip::H_ENTRY);
        let page = page_of(&f.w, 0);
        f.w.machine.mem.write_u32(page, 0x37);
        f.w.run_agent(0, 1000).unwrap();
        assert_eq!(vmcalls(&f.w), [(BREAK, BREAK_UNKNOWN_EXIT, 0)]);
        assert_eq!(outcomes(&f.w), [(AgentOutcome::Break, None)]);
        assert_eq!(f.w.vcpus[0].rip, CODE);
        assert_eq!(f.get(1), 0);
        assert_eq!(
            [veinfo::VE_TOTAL, veinfo::VE_MM, veinfo::VE_PAGE_WALK].map(|o| pg(&f.w, 0, o)),
            [1, 0, 0]
        );
    }
}

/// B28: qualification bit 8 clear is a page walk (`VePageWalk`++), whatever bit 7 says (Q11).
#[test]
fn b28_page_walk_dispatch_by_bit_8_only() {
    let mut f = fx(Quirks::fixed());
    f.code(&[0x48, 0x8B, 0x18]); // mov rbx, [rax]
    f.w.vcpus[0].set_reg(Gpr::Rax, DATA);
    let pte = f.get(0);
    f.set(0, pte & !(A | D));
    let e0 = f.e(0);
    inject(&mut f.w, 0, QUAL_WALK, DATA, e0);
    assert_eq!(f.get(0) & A, A);
    f.set(0, pte & !(A | D));
    inject(&mut f.w, 0, QUAL_WALK & !0x80, DATA, e0);
    assert_eq!(f.get(0) & A, A, "bit 7 is not checked");
    assert_eq!(
        [veinfo::VE_PAGE_WALK, veinfo::VE_MM].map(|o| pg(&f.w, 0, o)),
        [2, 0]
    );
    assert!(vmcalls(&f.w).is_empty());
}

/// B29: bit 8 set and a saved CS other than 0x10: HvBreak(CS_NOT_KERNEL, ACCESS_DENIED).
#[test]
fn b29_cs_not_kernel() {
    let mut r = vreq(
        Profile::Hvmi,
        &[0x48, 0x89, 0x18],
        &[(Gpr::Rax, G), (Gpr::Rbx, OLD)],
        0,
    );
    r.cs = 0x33;
    let v = verdict(&r);
    assert_eq!(v.outcome, Some(AgentOutcome::Rejected));
    assert_eq!(v.reason, Some(RejectReason::CsNotKernel));
    assert_eq!(v.vmcalls, [(BREAK, BREAK_CS_NOT_KERNEL, ST_ACCESS_DENIED)]);
    assert_eq!((v.entry, v.rip), (0, layout::VERDICT_DEFAULT_RIP));
}

/// B30: cleanup counts `VeIgnoredTotal` and times the event (TscTotal, TscCount) only when it
/// was not raised.
#[test]
fn b30_cleanup_times_only_unraised_events() {
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    let t = [
        veinfo::TSC_COUNT,
        veinfo::TSC_TOTAL,
        veinfo::VE_IGNORED_TOTAL,
    ];
    assert_eq!(t.map(|o| pg(&f.w, 0, o)), [0, 0, 0]);
    f.mov_entry(0, 1, OLD | 0x200);
    one_ve(&mut f.w, 0);
    assert_eq!(pg(&f.w, 0, veinfo::TSC_COUNT), 1);
    assert!(pg(&f.w, 0, veinfo::TSC_TOTAL) > 0);
    assert_eq!(pg(&f.w, 0, veinfo::VE_IGNORED_TOTAL), 1);
}

/// B31: after a break the handler returns without advancing RIP, so the instruction runs
/// again and faults again at the same address.
#[test]
fn b31_break_does_not_advance_rip() {
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, OLD);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::H_ENTRY);
    let page = page_of(&f.w, 0);
    f.w.machine.mem.write_u32(page, 0x37);
    f.w.run_agent(0, 1000).unwrap();
    assert_eq!(f.w.vcpus[0].rip, CODE);
    one_ve(&mut f.w, 0);
    assert_eq!(
        ves(&f.w),
        [
            (QUAL_WRITE, egla(1), f.e(1).0),
            (QUAL_WRITE, egla(1), f.e(1).0)
        ]
    );
    assert_eq!(f.get(1), OLD, "the second time it goes through");
}

// =============================================================================================
// 3. VeHandlePtWrite (B34–B57)
// =============================================================================================

/// B34: bytes that do not decode are DISASM_ERROR.
#[test]
fn b34_decode_error_rejected() {
    let mut r = vreq(Profile::Hvmi, &[0x06], &[], OLD); // PUSH ES: invalid in 64-bit mode
    r.gla = Some(G);
    let v = verdict(&r);
    assert_eq!(v.outcome, Some(AgentOutcome::Rejected));
    assert_eq!(v.reason, Some(RejectReason::DecodeError));
    assert_eq!(
        v.vmcalls,
        [(BREAK, BREAK_EMULATION_FAILED, ST_DISASM_ERROR)]
    );
    assert_eq!((v.entry, v.rip), (OLD, layout::VERDICT_DEFAULT_RIP));
}

/// B35: REP on a string instruction is refused; an F3 byte on a non-string instruction is not
/// `IsRepeated` (VE-SEMANTICS section 2).
#[test]
fn b35_rep_rejected() {
    let v = hvmi(
        &[0xF3, 0x48, 0xAB], // rep stosq
        &[(Gpr::Rdi, G), (Gpr::Rax, OLD ^ RW), (Gpr::Rcx, 1)],
        OLD,
    );
    assert_hvmi_refusal(&v, RejectReason::Rep, OLD);
    let v = hvmi(
        &[0xF3, 0x48, 0x89, 0x18], // mov [rax], rbx with an ignored F3
        &[(Gpr::Rax, G), (Gpr::Rbx, OLD ^ RW)],
        OLD,
    );
    assert_eq!(v.outcome, Some(AgentOutcome::Raised), "{v:?}");
    assert_eq!(
        (v.entry, v.rip),
        (OLD ^ RW, layout::VERDICT_DEFAULT_RIP + 4)
    );
}

/// B35: `HasSeg` refuses the write. In 64-bit mode the pinned bddisasm (1.x) sets it for 2E
/// and 3E (branch hints) and for FS and GS, not for ES and SS, whose overrides do nothing there:
/// an ES- or SS-prefixed write is emulated like the bare one.
#[test]
fn b35_segment_prefix_rejected_as_bddisasm_sets_has_seg() {
    for p in [0x2Eu8, 0x3E, 0x64, 0x65] {
        let v = hvmi(
            &[p, 0x48, 0x89, 0x18],
            &[(Gpr::Rax, G), (Gpr::Rbx, OLD ^ RW)],
            OLD,
        );
        assert_hvmi_refusal(&v, RejectReason::SegmentPrefix, OLD);
    }
    for p in [0x26u8, 0x36] {
        let v = hvmi(
            &[p, 0x48, 0x89, 0x18],
            &[(Gpr::Rax, G), (Gpr::Rbx, OLD ^ RW)],
            OLD,
        );
        // RW changes on a present entry: relevant, raised (B51, B54), stored, RIP + 4.
        assert_eq!(v.outcome, Some(AgentOutcome::Raised), "{p:#x}: {v:?}");
        assert_eq!(v.entry, OLD ^ RW);
        assert_eq!(v.rip, layout::VERDICT_DEFAULT_RIP + 4);
    }
}

/// B35: an explicit `[rsp+x]` operand is not a stack access.
#[test]
fn b35_explicit_rsp_operand_accepted() {
    const R: u64 = 0xFFFF_F800_0060_0800;
    for profile in [Profile::Hvmi, Profile::Fixed] {
        // mov [rsp+0x1000], rbx
        let v = verdict(&vreq(
            profile,
            &[0x48, 0x89, 0x9C, 0x24, 0x00, 0x10, 0x00, 0x00],
            &[(Gpr::Rsp, R), (Gpr::Rbx, OLD ^ RW)],
            OLD,
        ));
        assert_eq!(v.gla, R + 0x1000);
        assert_eq!(v.outcome, Some(AgentOutcome::Raised), "{v:?}");
        assert_eq!(v.reason, None);
        assert_eq!(v.entry, OLD ^ RW);
        assert_eq!(v.rip, layout::VERDICT_DEFAULT_RIP + 8);
    }
}

/// B35: RIP-relative addressing is refused.
#[test]
fn b35_rip_relative_rejected() {
    // mov [rip+0x100009], rbx at 0x400000: EA = 0x400007 + 0x100009 = 0x500010.
    let v = hvmi(
        &[0x48, 0x89, 0x1D, 0x09, 0x00, 0x10, 0x00],
        &[(Gpr::Rbx, OLD ^ RW)],
        OLD,
    );
    assert_eq!(v.gla, 0x50_0010);
    assert_hvmi_refusal(&v, RejectReason::RipRelative, OLD);
}

/// B35: an implicit stack access (POP to memory) is refused.
#[test]
fn b35_stack_access_rejected() {
    let mut r = vreq(Profile::Hvmi, &[0x8F, 0x00], &[(Gpr::Rax, G)], OLD); // pop qword [rax]
    r.gla = Some(G);
    assert_hvmi_refusal(&verdict(&r), RejectReason::StackAccess, OLD);
}

/// VE-SEMANTICS section 2: the rules are evaluated in the order cs_not_kernel, decode_error,
/// rep, segment_prefix, rip_relative, stack_access, not_memory, size, gla_mismatch, misaligned,
/// unsupported_instruction; each case below breaks two rules and must report the earlier.
#[test]
fn b35_rejection_order() {
    struct Case {
        bytes: &'static [u8],
        regs: &'static [(Gpr, u64)],
        gla: Option<u64>,
        cs: u16,
        want: RejectReason,
    }
    let cases = [
        Case {
            bytes: &[0x06],
            regs: &[],
            gla: Some(G),
            cs: 0x33,
            want: RejectReason::CsNotKernel,
        },
        Case {
            bytes: &[0x26, 0xF3, 0x48, 0xAB], // es rep stosq
            regs: &[(Gpr::Rdi, G), (Gpr::Rcx, 1)],
            gla: None,
            cs: 0x10,
            want: RejectReason::Rep,
        },
        Case {
            bytes: &[0x3E, 0x48, 0x89, 0x1D, 0x08, 0x00, 0x10, 0x00], // ds: mov [rip+d], rbx
            regs: &[],
            gla: None,
            cs: 0x10,
            want: RejectReason::SegmentPrefix,
        },
        Case {
            bytes: &[0x50], // push rax: stack access, operand 0 a register
            regs: &[],
            gla: Some(G),
            cs: 0x10,
            want: RejectReason::StackAccess,
        },
        Case {
            bytes: &[0x8B, 0x18], // mov ebx, [rax]: operand 0 a 4-byte register
            regs: &[(Gpr::Rax, G)],
            gla: None,
            cs: 0x10,
            want: RejectReason::NotMemory,
        },
        Case {
            bytes: &[0x89, 0x18], // mov [rax], ebx at a GLA that does not match either
            regs: &[(Gpr::Rax, G)],
            gla: Some(G + 8),
            cs: 0x10,
            want: RejectReason::Size,
        },
        Case {
            bytes: &[0x48, 0x01, 0x18], // add [rax], rbx, misaligned, GLA mismatch
            regs: &[(Gpr::Rax, G + 4)],
            gla: Some(G + 12),
            cs: 0x10,
            want: RejectReason::GlaMismatch,
        },
        Case {
            bytes: &[0x48, 0x01, 0x18], // add [rax], rbx, misaligned
            regs: &[(Gpr::Rax, G + 4)],
            gla: None,
            cs: 0x10,
            want: RejectReason::Misaligned,
        },
        Case {
            bytes: &[0x48, 0x01, 0x18],
            regs: &[(Gpr::Rax, G)],
            gla: None,
            cs: 0x10,
            want: RejectReason::UnsupportedInstruction,
        },
    ];
    for c in cases {
        let mut r = vreq(Profile::Hvmi, c.bytes, c.regs, OLD);
        r.gla = c.gla;
        r.cs = c.cs;
        let v = verdict(&r);
        assert_eq!(v.outcome, Some(AgentOutcome::Rejected), "{:02x?}", c.bytes);
        assert_eq!(v.reason, Some(c.want), "{:02x?}", c.bytes);
        assert_eq!(v.rip, layout::VERDICT_DEFAULT_RIP);
    }
}

/// B36: operand 0 must be memory.
#[test]
fn b36_operand0_must_be_memory() {
    let v = hvmi(&[0x48, 0x8B, 0x18], &[(Gpr::Rax, G)], OLD); // mov rbx, [rax]
    assert_hvmi_refusal(&v, RejectReason::NotMemory, OLD);
}

/// B37: operand 0 must be exactly 8 bytes.
#[test]
fn b37_operand0_must_be_8_bytes() {
    for bytes in [&[0x89u8, 0x18][..], &[0x66, 0x89, 0x18], &[0x88, 0x18]] {
        let v = hvmi(bytes, &[(Gpr::Rax, G), (Gpr::Rbx, 0x1)], OLD);
        assert_hvmi_refusal(&v, RejectReason::Size, OLD);
    }
}

/// B38: the address is base + index × scale + sign-extended displacement from the saved
/// registers, the base and index trimmed to their size, with no segment base; a different
/// faulting GLA is refused.
#[test]
fn b38_gla_recomputed_without_segment_base() {
    // mov [rax+rcx*8+0x10], rbx: G = (G - 0x28) + 3*8 + 0x10.
    let v = hvmi(
        &[0x48, 0x89, 0x5C, 0xC8, 0x10],
        &[(Gpr::Rax, G - 0x28), (Gpr::Rcx, 3), (Gpr::Rbx, OLD ^ RW)],
        OLD,
    );
    assert_eq!(v.gla, G);
    assert_eq!(v.outcome, Some(AgentOutcome::Raised), "{v:?}");
    // mov [rax-8], rbx: a negative disp8 is sign-extended.
    let v = hvmi(
        &[0x48, 0x89, 0x58, 0xF8],
        &[(Gpr::Rax, G + 8), (Gpr::Rbx, OLD ^ RW)],
        OLD,
    );
    assert_eq!((v.gla, v.outcome), (G, Some(AgentOutcome::Raised)));
    // mov [eax], rbx (0x67): the base is trimmed to 32 bits.
    let v = hvmi(
        &[0x67, 0x48, 0x89, 0x18],
        &[(Gpr::Rax, 0xDEAD_BEEF_0050_0010), (Gpr::Rbx, OLD ^ RW)],
        OLD,
    );
    assert_eq!((v.gla, v.outcome), (0x50_0010, Some(AgentOutcome::Raised)));
    // The CPU reports G + 0x1000, as it would with a segment base of 0x1000: the agent does
    // not add one, so the addresses differ.
    let mut r = vreq(
        Profile::Hvmi,
        &[0x48, 0x89, 0x18],
        &[(Gpr::Rax, G), (Gpr::Rbx, OLD ^ RW)],
        OLD,
    );
    r.gla = Some(G + 0x1000);
    assert_hvmi_refusal(&verdict(&r), RejectReason::GlaMismatch, OLD);
}

/// B39: an address that is not 8-aligned is refused.
#[test]
fn b39_misaligned_rejected() {
    let v = hvmi(
        &[0x48, 0x89, 0x18],
        &[(Gpr::Rax, G + 4), (Gpr::Rbx, OLD ^ RW)],
        OLD,
    );
    assert_eq!(v.gla, G + 4);
    assert_hvmi_refusal(&v, RejectReason::Misaligned, OLD);
}

/// B40: a refusal happens before any lock is taken or any state changes.
#[test]
fn b40_rejection_changes_nothing() {
    let mut f = fx(Quirks::hvmi());
    f.set(1, OLD);
    f.code(&[0x48, 0x01, 0x18]); // add [rax], rbx
    f.w.vcpus[0].set_reg(Gpr::Rax, egla(1));
    f.w.vcpus[0].set_reg(Gpr::Rbx, 0x1000);
    deliver(&mut f.w, 0);
    while f.w.rip_in_agent(f.w.vcpus[0].rip) || f.w.vcpus[0].rip == layout::OS_VE_HANDLER_GVA {
        assert_eq!(locks(&f.w), [0; 8], "no lock at any step");
        f.w.step(0).unwrap();
    }
    assert_eq!(f.get(1), OLD);
    assert_eq!(f.w.vcpus[0].rip, CODE);
    assert_eq!(f.w.vcpus[0].reg(Gpr::Rbx), 0x1000);
    assert_eq!(
        [veinfo::OLD_VALUE, veinfo::NEW_VALUE, veinfo::VE_MM].map(|o| pg(&f.w, 0, o)),
        [0, 0, 0]
    );
    assert_eq!(raised_byte(&f.w, 0), 0);
    assert_eq!(
        vmcalls(&f.w),
        [(BREAK, BREAK_EMULATION_FAILED, ST_NOT_SUPPORTED)]
    );
}

/// A page at PML4 index 0x100 with its own PDPT, PD and PT, so each of its tables can be
/// write-protected on its own.
const DATA2: u64 = 0xFFFF_8000_0000_0000;

/// Write-protects and makes convertible the table page holding `entry`: A and D are set on its
/// present entries first (so that walks through it need no A/D write), then a monitor goes on
/// its entry 511.
fn protect_table(w: &mut World, entry: Gpa) {
    let table = entry.page_base();
    or_present_entries(w, table, A | D);
    w.place_monitor(table.wrapping_add(511 * 8));
    w.commit_hooks();
}

/// B41: the lock index is the first of the PML4, PDP, PD and PT indices of the written address
/// that differs from the self-map index (else the entry index): for a self-map address of any
/// level that is the PML4 index of the translated VA; for any other mapping of a table page it
/// is that mapping's own PML4 index.
#[test]
fn b41_lock_index_selfmap() {
    for level in 1..=4u8 {
        let mut f = fx(Quirks::fixed());
        f.w.guest
            .map_new(&mut f.w.machine, DATA2, PteFlags::WRITABLE)
            .unwrap();
        let entry = f.w.guest.entry_gpa(&f.w.machine, DATA2, level).unwrap();
        protect_table(&mut f.w, entry);
        let old = mem(&f.w, entry);
        f.code(&[0x48, 0x89, 0x18]);
        let gla = self_map_entry_address(S, Gla(DATA2), level).0;
        f.w.vcpus[0].set_reg(Gpr::Rax, gla);
        f.w.vcpus[0].set_reg(Gpr::Rbx, old | 0x200);
        deliver(&mut f.w, 0);
        assert_eq!(ves(&f.w)[0].2, entry.0, "level {level}");
        to_step(&mut f.w, 0, rip::PT_READ_OLD);
        let mut want = [0u64; 8];
        want[0x100 / 64] = 1 << (0x100 % 64);
        assert_eq!(locks(&f.w), want, "level {level}: lock 0x100 only");
        f.w.run_agent(0, 1000).unwrap();
        assert_eq!(locks(&f.w), [0; 8]);
        assert_eq!(mem(&f.w, entry), old | 0x200);
    }
    // A non-self-map alias of DATA2's page table at PML4 index 0x180 (Q8).
    let mut f = fx(Quirks::fixed());
    f.w.guest
        .map_new(&mut f.w.machine, DATA2, PteFlags::WRITABLE)
        .unwrap();
    let pt2 = f.w.guest.entry_gpa(&f.w.machine, DATA2, 1).unwrap();
    protect_table(&mut f.w, pt2);
    const ALIAS: u64 = 0xFFFF_C000_0000_0000;
    f.w.guest
        .map_at(&mut f.w.machine, ALIAS, pt2.page_base(), PteFlags::WRITABLE)
        .unwrap();
    f.code(&[0x48, 0x89, 0x18]);
    f.w.vcpus[0].set_reg(Gpr::Rax, ALIAS + 8);
    f.w.vcpus[0].set_reg(Gpr::Rbx, 0x200);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::PT_READ_OLD);
    let mut want = [0u64; 8];
    want[0x180 / 64] = 1 << (0x180 % 64);
    assert_eq!(locks(&f.w), want);
}

/// B42: the lock is held from just after validation until after the final store, across the
/// old-value read, the emulation, the relevance and cache tests and the RAISE_EPT VMCALL; a
/// held lock makes the agent spin (LOCK BTS + PAUSE).
#[test]
fn b42_lock_held_across_the_raise() {
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, OLD);
    deliver(&mut f.w, 0);
    let mut seen = BTreeMap::new();
    while f.w.rip_in_agent(f.w.vcpus[0].rip) || f.w.vcpus[0].rip == layout::OS_VE_HANDLER_GVA {
        let off = f.w.vcpus[0].rip.wrapping_sub(layout::AGENT_GVA);
        seen.insert(off, lock_held(&f.w, 0x1F0));
        f.w.step(0).unwrap();
    }
    let want = [
        (rip::PT_DECODE, false),
        (rip::PT_LOCK, false),
        (rip::PT_READ_OLD, true),
        (rip::PT_EMULATE, true),
        (rip::PT_RELEVANCE, true),
        (rip::PT_RAISE, true),
        (rip::PT_STORE, true),
        (rip::H_CLEANUP, false),
    ];
    for (off, held) in want {
        assert_eq!(seen.get(&off), Some(&held), "step {off:#x}");
    }
    assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 0, 0)]);
    // Spin on a lock another CPU holds.
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, OLD);
    set_lock(&mut f.w, 0x1F0, true);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::PT_LOCK);
    for _ in 0..3 {
        f.w.step(0).unwrap();
        assert_eq!(f.w.vcpus[0].rip, agent_at(rip::PT_LOCK));
    }
    set_lock(&mut f.w, 0x1F0, false);
    f.w.step(0).unwrap();
    assert_eq!(f.w.vcpus[0].rip, agent_at(rip::PT_READ_OLD));
}

/// B43: MOV: new = the register, or the immediate as decoded (imm32 sign-extended).
#[test]
fn b43_mov_imm32_sign_extended() {
    for p in [Profile::Fixed, Profile::Hvmi] {
        let bytes = [0x48, 0xC7, 0x00, 0x01, 0x00, 0x00, 0x80]; // mov qword [rax], 0x80000001
        let v = verdict(&vreq(p, &bytes, &[(Gpr::Rax, G)], OLD));
        assert_eq!(v.new, Some(0xFFFF_FFFF_8000_0001));
        assert_eq!(v.entry, 0xFFFF_FFFF_8000_0001);
        assert_eq!(v.outcome, Some(AgentOutcome::Raised));
        let r = reference(&bytes, &[(Gpr::Rax, G)], FIXED1, &[(G, OLD)]);
        assert_eq!(r.mem[&G], v.entry, "reference CPU");
        let bytes = [0x48, 0xC7, 0x00, 0x63, 0x40, 0x23, 0x01]; // positive imm32
        let v = verdict(&vreq(p, &bytes, &[(Gpr::Rax, G)], 0));
        assert_eq!(v.entry, 0x0123_4063);
        let v = verdict(&vreq(
            p,
            &[0x48, 0x89, 0x18],
            &[(Gpr::Rax, G), (Gpr::Rbx, 0xFEDC_BA98_7654_3210)],
            OLD,
        ));
        assert_eq!(v.new, Some(0xFEDC_BA98_7654_3210), "register source");
        // mov [moffs64], rax: an absolute address, no base or index.
        let mut bytes = vec![0x48, 0xA3];
        bytes.extend_from_slice(&G.to_le_bytes());
        let v = verdict(&vreq(p, &bytes, &[(Gpr::Rax, OLD ^ RW)], OLD));
        assert_eq!((v.gla, v.new, v.entry), (G, Some(OLD ^ RW), OLD ^ RW));
        assert_eq!(v.rip, layout::VERDICT_DEFAULT_RIP + 10);
    }
}

/// B44: STOS (without REP) stores RAX (RDI: Q5).
#[test]
fn b44_stos_stores_rax() {
    for p in [Profile::Fixed, Profile::Hvmi] {
        let v = verdict(&vreq(
            p,
            &[0x48, 0xAB],
            &[(Gpr::Rdi, G), (Gpr::Rax, OLD ^ RW)],
            OLD,
        ));
        assert_eq!((v.new, v.entry), (Some(OLD ^ RW), OLD ^ RW));
        assert_eq!(v.outcome, Some(AgentOutcome::Raised));
        assert_eq!(v.rip, layout::VERDICT_DEFAULT_RIP + 2);
    }
}

/// B45: XCHG: new = the source register, and that register receives old.
#[test]
fn b45_xchg_sets_source_to_old() {
    for p in [Profile::Fixed, Profile::Hvmi] {
        let regs = [(Gpr::Rax, G), (Gpr::Rbx, OLD ^ RW)];
        let v = verdict(&vreq(p, &[0x48, 0x87, 0x18], &regs, OLD));
        assert_eq!((v.old, v.new), (Some(OLD), Some(OLD ^ RW)));
        assert_eq!(v.entry, OLD ^ RW);
        assert_eq!(reg(&v, Gpr::Rbx), OLD);
        assert_eq!(v.outcome, Some(AgentOutcome::Raised));
        let r = reference(&[0x48, 0x87, 0x18], &regs, FIXED1, &[(G, OLD)]);
        assert_eq!(
            (r.mem[&G], r.regs[Gpr::Rbx as usize]),
            (v.entry, reg(&v, Gpr::Rbx))
        );
    }
}

/// B46: CMPXCHG: new = src if old == RAX, else unchanged and RAX = old; the flags are those of
/// CMP(RAX, old).
#[test]
fn b46_cmpxchg_mismatch_loads_rax() {
    let bytes = [0xF0, 0x48, 0x0F, 0xB1, 0x19]; // lock cmpxchg [rcx], rbx
                                                // Mismatch: RAX = 1, old = 3. 1 - 3 = 0xFFFF_FFFF_FFFF_FFFE: CF = 1, SF = 1, AF = 1
                                                // (borrow out of bit 3), ZF = 0, OF = 0, PF = 0 (0xFE has seven 1 bits).
    let regs = [(Gpr::Rcx, G), (Gpr::Rax, 1), (Gpr::Rbx, OLD)];
    for p in [Profile::Fixed, Profile::Hvmi] {
        let v = verdict(&vreq(p, &bytes, &regs, 3));
        assert_eq!((v.new, v.entry), (Some(3), 3), "unchanged");
        assert_eq!(reg(&v, Gpr::Rax), 3, "RAX = old");
        assert_eq!(v.rflags & !RF, FIXED1 | CF | AF | SF);
        assert_eq!(v.outcome, Some(AgentOutcome::IgnoredIrrelevant));
        let r = reference(&bytes, &regs, FIXED1, &[(G, 3)]);
        assert_eq!((r.mem[&G], r.regs[0], r.rflags), (3, 3, v.rflags & !RF));
    }
    // Match: RAX = old = 3: new = RBX, ZF = 1, PF = 1, RAX unchanged.
    let regs = [(Gpr::Rcx, G), (Gpr::Rax, 3), (Gpr::Rbx, OLD)];
    // With and without LOCK (B58: the agent does not look at LOCK).
    for bytes in [&bytes[..], &bytes[1..]] {
        let v = fixed(bytes, &regs, 3);
        assert_eq!((v.new, v.entry, reg(&v, Gpr::Rax)), (Some(OLD), OLD, 3));
        assert_eq!(v.rflags & !RF, FIXED1 | ZF | PF);
        assert_eq!(v.outcome, Some(AgentOutcome::Raised));
    }
}

/// B47/B50: OR/AND/XOR with a register or an immediate: new = old OP src; CF = OF = 0, SF, ZF,
/// PF from the result; AF (undefined) keeps its value.
#[test]
fn b47_logic_ops_and_their_flags() {
    let cases: [(&[u8], u64, u64, u64, u64); 3] = [
        // or [rax], rbx (rbx = RW), flags in: CF ZF AF OF.
        (
            &[0x48, 0x09, 0x18],
            0x0000_0000_0123_4061,
            FIXED1 | CF | ZF | AF | OF,
            0x0000_0000_0123_4063,
            FIXED1 | PF | AF,
        ),
        // and qword [rax], -3 (imm8 sign-extended): clears RW; 0x61 has odd parity.
        (
            &[0x48, 0x83, 0x20, 0xFD],
            OLD,
            FIXED1 | AF,
            0x0000_0000_0123_4061,
            FIXED1 | AF,
        ),
        // xor qword [rax], 0x80000000 (imm32 sign-extended).
        (
            &[0x48, 0x81, 0x30, 0x00, 0x00, 0x00, 0x80],
            OLD,
            FIXED1,
            0xFFFF_FFFF_8123_4063,
            FIXED1 | SF | PF,
        ),
    ];
    for (bytes, old, fin, new, fout) in cases {
        let regs = [(Gpr::Rax, G), (Gpr::Rbx, RW)];
        let mut r = vreq(Profile::Fixed, bytes, &regs, old);
        r.rflags = fin;
        let v = verdict(&r);
        assert_eq!((v.new, v.entry), (Some(new), new), "{bytes:02x?}");
        assert_eq!(v.rflags & !RF, fout, "{bytes:02x?}");
        assert_eq!(v.outcome, Some(AgentOutcome::Raised));
        let rr = reference(bytes, &regs, fin, &[(G, old)]);
        assert_eq!((rr.mem[&G], rr.rflags), (new, fout), "reference CPU");
    }
}

/// B48: BTS/BTR/BTC with an immediate (taken mod 64) or a register below 64: CF = the original
/// bit; ZF and the undefined flags keep their value.
#[test]
fn b48_bit_test_and_modify() {
    let cases: [(&[u8], u64, u64, u64, u64); 5] = [
        // (bytes, rbx, old, new, CF)
        (
            &[0x48, 0x0F, 0xBA, 0x28, 0x05],
            0,
            0x0123_4043,
            0x0123_4063,
            0,
        ), // bts 5
        (
            &[0x48, 0x0F, 0xBA, 0x30, 0x01],
            0,
            0x0123_4063,
            0x0123_4061,
            1,
        ), // btr 1
        (&[0x48, 0x0F, 0xBA, 0x38, 0x3F], 0, OLD, OLD | XD, 0), // btc 63
        (
            &[0x48, 0x0F, 0xBA, 0x28, 0x41],
            0,
            0x0123_4061,
            0x0123_4063,
            0,
        ), // bts 65 = 1
        (&[0x48, 0x0F, 0xAB, 0x18], 1, 0x0123_4061, 0x0123_4063, 0), // bts rbx = 1
    ];
    for (bytes, rbx, old, new, cf) in cases {
        for p in [Profile::Fixed, Profile::Hvmi] {
            let regs = [(Gpr::Rax, G), (Gpr::Rbx, rbx)];
            let mut r = vreq(p, bytes, &regs, old);
            r.rflags = FIXED1 | ZF | CF;
            let v = verdict(&r);
            assert_eq!((v.new, v.entry), (Some(new), new), "{bytes:02x?} {p}");
            assert_eq!(v.rflags & !RF, FIXED1 | ZF | cf, "{bytes:02x?} {p}");
            let rr = reference(bytes, &regs, FIXED1 | ZF | CF, &[(G, old)]);
            assert_eq!((rr.mem[&G], rr.rflags), (new, FIXED1 | ZF | cf));
        }
    }
}

/// B49: any other instruction is NOT_SUPPORTED (and then Q1 in `hvmi`).
#[test]
fn b49_other_instructions_rejected() {
    let list: [&[u8]; 8] = [
        &[0x48, 0x01, 0x18],             // add [rax], rbx
        &[0x48, 0x29, 0x18],             // sub [rax], rbx
        &[0x48, 0xFF, 0x00],             // inc qword [rax]
        &[0x48, 0xF7, 0x18],             // neg qword [rax]
        &[0x48, 0xF7, 0x10],             // not qword [rax]
        &[0x48, 0x0F, 0xC1, 0x18],       // xadd [rax], rbx
        &[0x48, 0x0F, 0xC3, 0x18],       // movnti [rax], rbx
        &[0x66, 0x48, 0x0F, 0x7E, 0x00], // movq [rax], xmm0
    ];
    for bytes in list {
        let v = hvmi(bytes, &[(Gpr::Rax, G), (Gpr::Rbx, 1)], OLD);
        assert_eq!(v.gla, G, "{bytes:02x?}");
        assert_hvmi_refusal(&v, RejectReason::UnsupportedInstruction, OLD);
    }
}

/// B50: MOV, XCHG and STOS change no flag.
#[test]
fn b50_mov_xchg_stos_keep_the_flags() {
    let all = FIXED1 | CF | PF | AF | ZF | SF | OF | DF;
    let cases: [(&[u8], Gpr); 3] = [
        (&[0x48, 0x89, 0x18], Gpr::Rax),
        (&[0x48, 0x87, 0x18], Gpr::Rax),
        (&[0x48, 0xAB], Gpr::Rdi),
    ];
    for (bytes, addr) in cases {
        let mut r = vreq(
            Profile::Fixed,
            bytes,
            &[(addr, G), (Gpr::Rbx, OLD ^ RW)],
            OLD,
        );
        r.rflags = all;
        let v = verdict(&r);
        assert!(v.outcome.is_some(), "{v:?}");
        assert_eq!(v.rflags & !RF, all, "{bytes:02x?}");
    }
}

/// B51: relevant iff (new XOR old) & 0x000FFFFFFFFFF087 != 0 (XD too in `fixed`, Q9) and old or
/// new is present.
#[test]
fn b51_relevance_needs_present_old_or_new() {
    let base = 0x0000_0000_0123_4000u64;
    let mut cases = vec![
        (0, base, false),                     // PFN only, neither present
        (0, base | P, true),                  // becomes present
        (base | P, 0, true),                  // becomes not present
        (base | P, base | P | RW, true),      // RW
        (base | P, base | P | 0x4, true),     // US
        (base | P, base | P | 0x80, true),    // PS
        (base | P, base | P | 0x1000, true),  // PFN bit 12
        (base | P, base | P | 1 << 51, true), // PFN bit 51
        (base, (base | 0x2) ^ 0x1000, false), // not present on either side
    ];
    for bit in [
        0x8u64,
        0x10,
        0x20,
        0x40,
        0x100,
        0x200,
        0x400,
        0x800,
        1 << 52,
        1 << 62,
    ] {
        cases.push((base | P, base | P | bit, false)); // PWT PCD A D G, ignored, PK bits
    }
    for (old, new, relevant) in cases {
        let v = fixed(&[0x48, 0x89, 0x18], &[(Gpr::Rax, G), (Gpr::Rbx, new)], old);
        let want = if relevant {
            AgentOutcome::Raised
        } else {
            AgentOutcome::IgnoredIrrelevant
        };
        assert_eq!(v.outcome, Some(want), "{old:#x} -> {new:#x}");
        assert_eq!(v.entry, new);
        assert_eq!(v.vmcalls.is_empty(), !relevant);
    }
}

/// B52: an irrelevant write increments VeIgnoredIrrelevant and is stored without a raise.
#[test]
fn b52_irrelevant_write_counted_not_raised() {
    let mut f = fx(Quirks::fixed());
    f.set(1, OLD);
    f.mov_entry(0, 1, OLD | 0x100); // G bit
    one_ve(&mut f.w, 0);
    assert_eq!(f.get(1), OLD | 0x100);
    assert_eq!(f.w.vcpus[0].rip, CODE + 3);
    assert!(vmcalls(&f.w).is_empty());
    assert_eq!(
        [veinfo::VE_IGNORED_IRRELEVANT, veinfo::VE_MM].map(|o| pg(&f.w, 0, o)),
        [1, 1]
    );
    assert_eq!(outcomes(&f.w), [(AgentOutcome::IgnoredIrrelevant, None)]);
}

/// B53: a relevant write looks the cache up by the faulting GPA, not by the GLA.
#[test]
fn b53_cache_lookup_by_gpa_not_gla() {
    // Keyed by the GLA: not found, raised.
    let mut f = fx(Quirks::fixed());
    f.w.update_cache(Gpa(egla(1)), false);
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 0, 0)]);
    // Keyed by the GPA: found, ignored.
    let mut f = fx(Quirks::fixed());
    let e1 = f.e(1);
    f.w.update_cache(e1, false);
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert!(vmcalls(&f.w).is_empty());
    assert_eq!(outcomes(&f.w), [(AgentOutcome::IgnoredCache, None)]);
    assert_eq!(pg(&f.w, 0, veinfo::VE_IGNORED_CACHE), 1);
    assert_eq!(f.get(1), OLD);
}

/// B54: before RAISE_EPT the agent sets Raised and copies bddisasm's 16-byte
/// `InstructionBytes` to 0x260: the 15 bytes the decoder fetched (min(16,
/// ND_MAX_INSTRUCTION_LENGTH)) and a 0, whatever the guest has at RIP + 15.
#[test]
fn b54_instruction_bytes_copied_before_raise() {
    let mut bytes = [0x90u8; 16];
    bytes[..3].copy_from_slice(&[0x48, 0x89, 0x18]);
    bytes[15] = 0xCC;
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, OLD);
    f.code(&bytes);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::PT_RAISE);
    let at = page_of(&f.w, 0).wrapping_add(veinfo::INSTRUCTION);
    let mut got = [0u8; 16];
    f.w.machine.mem.read(at, &mut got);
    assert_eq!(got, [0; 16]);
    f.w.step(0).unwrap();
    assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 0, 0)]);
    f.w.machine.mem.read(at, &mut got);
    let mut expected = bytes;
    expected[15] = 0;
    assert_eq!(got, expected);
    assert_eq!(raised_byte(&f.w, 0), 1);
    // An irrelevant write copies nothing.
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, 0x200);
    f.code(&bytes);
    one_ve(&mut f.w, 0);
    let at = page_of(&f.w, 0).wrapping_add(veinfo::INSTRUCTION);
    f.w.machine.mem.read(at, &mut got);
    assert_eq!((got, raised_byte(&f.w, 0)), ([0; 16], 0));
}

/// B55: after the raise the agent stores NewValue as the page holds it at 0x218.
#[test]
fn b55_store_after_raise() {
    let mut f = fx(Quirks::fixed());
    f.mov_entry(0, 1, OLD);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::PT_STORE);
    assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 0, 0)], "the raise came first");
    f.set(1, 0xDEAD_0000);
    pg_set(&mut f.w, 0, veinfo::NEW_VALUE, OLD ^ RW);
    f.w.step(0).unwrap();
    assert_eq!(f.get(1), OLD ^ RW);
}

/// B56: RIP advances by the decoded length.
#[test]
fn b56_rip_advanced_by_the_length() {
    type Case = (&'static [u8], &'static [(Gpr, u64)]);
    let cases: [Case; 4] = [
        (&[0x48, 0x89, 0x18], &[(Gpr::Rax, G)]),
        (&[0xF0, 0x48, 0x0F, 0xB1, 0x19], &[(Gpr::Rcx, G)]),
        (
            &[0x48, 0xC7, 0x00, 0x01, 0x00, 0x00, 0x00],
            &[(Gpr::Rax, G)],
        ),
        (
            &[0x48, 0x89, 0x9C, 0xC8, 0x00, 0x10, 0x00, 0x00], // mov [rax+rcx*8+0x1000], rbx
            &[(Gpr::Rax, G - 0x1000), (Gpr::Rcx, 0)],
        ),
    ];
    for (bytes, regs) in cases {
        for p in [Profile::Fixed, Profile::Hvmi] {
            let v = verdict(&vreq(p, bytes, regs, OLD));
            assert!(v.outcome.is_some(), "{v:?}");
            assert_eq!(v.rip, layout::VERDICT_DEFAULT_RIP + bytes.len() as u64);
        }
    }
}

/// B57: OldValue and NewValue stay in the page after the return.
#[test]
fn b57_old_and_new_stay_in_the_page() {
    let mut f = fx(Quirks::hvmi());
    f.set(1, OLD);
    f.mov_entry(0, 1, OLD ^ RW);
    one_ve(&mut f.w, 0);
    assert_eq!(
        [veinfo::OLD_VALUE, veinfo::NEW_VALUE].map(|o| pg(&f.w, 0, o)),
        [OLD, OLD ^ RW]
    );
}

// =============================================================================================
// 4. VeHandlePageWalk (B61–B67)
// =============================================================================================

/// Raises an EPT violation through the hardware path without running the agent.
fn raise_only(w: &mut World, cpu: usize, qualification: u64, gla: u64, gpa: Gpa) {
    let v = EptViolation {
        qualification: EptQualification::from_bits_retain(qualification),
        gpa,
        gla: Gla(gla),
        convertible: true,
    };
    let World { machine, vcpus, .. } = &mut *w;
    let o = machine.ept_violation(&mut vcpus[cpu], v);
    assert!(matches!(o, Outcome::VeDelivered(_)), "{o:?}");
    w.count_ve(cpu, qualification);
}

/// B61, written out: S<<39 | ... | index<<3, OR 0xFFFF000000000000.
fn b61_formula(level: u8, gla: u64) -> u64 {
    let (p4, p3, p2, p1) = (
        (gla >> 39) & 0x1FF,
        (gla >> 30) & 0x1FF,
        (gla >> 21) & 0x1FF,
        (gla >> 12) & 0x1FF,
    );
    let v = match level {
        4 => S << 39 | S << 30 | S << 21 | S << 12 | p4 << 3,
        3 => S << 39 | S << 30 | S << 21 | p4 << 12 | p3 << 3,
        2 => S << 39 | S << 30 | p4 << 21 | p3 << 12 | p2 << 3,
        _ => S << 39 | p4 << 30 | p3 << 21 | p2 << 12 | p1 << 3,
    };
    v | 0xFFFF_0000_0000_0000
}

/// B61: the self-map addresses of the four entries, and that they reach the entries the walk
/// uses.
#[test]
fn b61_self_map_addresses() {
    let mut f = fx(Quirks::fixed());
    map_user_page(&mut f.w);
    // DATA = 0xFFFFF80000400000: p4 0x1F0, p3 0, p2 2, p1 0.
    assert_eq!(b61_formula(1, DATA), 0xFFFF_F6FC_0000_2000);
    for gla in [DATA, USER_PAGE, CODE] {
        for level in 1..=4u8 {
            let a = b61_formula(level, gla);
            assert_eq!(self_map_entry_address(S, Gla(gla), level).0, a);
            let e = f.w.guest.entry_gpa(&f.w.machine, gla, level).unwrap();
            assert_eq!(phys(&f.w, a), e, "{gla:#x} level {level}");
        }
    }
}

/// B62: a non-present entry ends the walk at once: no raise, deeper levels untouched (even for
/// a user address with nothing set, which B66 would otherwise raise).
#[test]
fn b62_not_present_ends_walk() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut f = fx(q);
        let e = map_user_page(&mut f.w);
        f.w.machine.mem.write_u64(e[3], 0);
        for g in &e[..3] {
            let v = mem(&f.w, *g);
            f.w.machine.mem.write_u64(*g, v & !A);
        }
        inject(&mut f.w, 0, QUAL_WALK, USER_PAGE, e[3]);
        for g in &e[..3] {
            assert_eq!(mem(&f.w, *g) & A, A, "levels above get A");
        }
        assert_eq!(mem(&f.w, e[3]), 0);
        // Not present at the PML4 (index 4).
        const NOWHERE: u64 = 0x0000_0200_0000_0000;
        let pml4e = Gpa(f.w.guest.cr3 + 4 * 8);
        inject(&mut f.w, 0, QUAL_WALK, NOWHERE, pml4e);
        assert_eq!(mem(&f.w, pml4e), 0);
        assert!(vmcalls(&f.w).is_empty());
        assert_eq!(
            outcomes(&f.w),
            [
                (AgentOutcome::PageWalkSet, None),
                (AgentOutcome::PageWalkSet, None)
            ]
        );
        assert_eq!(
            [veinfo::VE_PAGE_WALK, veinfo::VE_IGNORED_TOTAL].map(|o| pg(&f.w, 0, o)),
            [2, 2]
        );
    }
}

/// B63: a PDPTE or PDE with PS is the leaf; the walk does not go below it.
#[test]
fn b63_large_page_is_the_leaf() {
    const L2: u64 = 0xFFFF_A000_0000_0000; // PML4 index 0x140, 2 MB page
    const L1: u64 = 0xFFFF_A080_0000_0000; // PML4 index 0x141, 1 GB page
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut f = fx(q);
        let w = &mut f.w;
        w.guest
            .tables
            .map(
                &mut w.machine.mem,
                Gla(L2),
                Gpa(0x0800_0000),
                PageSize::Size2M,
                PteFlags::WRITABLE,
            )
            .unwrap();
        w.guest
            .tables
            .map(
                &mut w.machine.mem,
                Gla(L1),
                Gpa(0x4000_0000),
                PageSize::Size1G,
                PteFlags::WRITABLE,
            )
            .unwrap();
        // Decoys where a PT (or PD) would be if the walk went on.
        w.machine.mem.write_u64(Gpa(0x0800_0000), P);
        w.machine.mem.write_u64(Gpa(0x4000_0000), P);
        for (gla, leaf_level) in [(L2, 2u8), (L1, 3)] {
            f.code(&[0x48, 0x8B, 0x18]); // mov rbx, [rax]: a read
            f.w.vcpus[0].set_reg(Gpr::Rax, gla);
            let entries: Vec<Gpa> = (leaf_level..=4)
                .rev()
                .map(|l| f.w.guest.entry_gpa(&f.w.machine, gla, l).unwrap())
                .collect();
            let leaf = *entries.last().unwrap();
            inject(&mut f.w, 0, QUAL_WALK, gla, leaf);
            for g in &entries {
                assert_eq!(mem(&f.w, *g) & A, A, "{gla:#x}");
            }
            assert_eq!(mem(&f.w, leaf) & D, 0, "a read sets no D on a fresh leaf");
        }
        assert_eq!(mem(&f.w, Gpa(0x0800_0000)), P, "below the 2 MB leaf");
        assert_eq!(mem(&f.w, Gpa(0x4000_0000)), P, "below the 1 GB leaf");
        assert!(vmcalls(&f.w).is_empty());
    }
}

/// B64 (`hvmi`): at the leaf, first D (if A is already set and RW or !CR0.WP), then A if it was
/// clear; the access type is ignored.
#[test]
fn b64_leaf_d_then_a_hvmi() {
    let mut f = fx(Quirks::hvmi());
    for g in &data_entries(&f.w)[..3] {
        let v = mem(&f.w, *g);
        f.w.machine.mem.write_u64(*g, v | A);
    }
    let pte = f.get(0) & !(A | D);
    let e0 = f.e(0);
    // (i) never accessed: A only.
    f.set(0, pte);
    inject(&mut f.w, 0, QUAL_WALK, DATA, e0);
    assert_eq!(f.get(0), pte | A);
    // (ii) accessed and writable: D.
    inject(&mut f.w, 0, QUAL_WALK, DATA, e0);
    assert_eq!(f.get(0), pte | A | D);
    // (iii) accessed, read-only, CR0.WP = 1: nothing.
    f.set(0, (pte | A) & !RW);
    inject(&mut f.w, 0, QUAL_WALK, DATA, e0);
    assert_eq!(f.get(0), (pte | A) & !RW);
    // (iv) accessed, read-only, CR0.WP = 0: D.
    f.w.vcpus[0].cr0.remove(Cr0::WP);
    inject(&mut f.w, 0, QUAL_WALK, DATA, e0);
    assert_eq!(f.get(0), (pte | A | D) & !RW);
    assert!(vmcalls(&f.w).is_empty(), "kernel address: no raise");
}

/// B65: bits are set under the lock of the entry's self-map address (B41 index rule), which
/// the agent spins on while another CPU holds it.
#[test]
fn b65_set_bits_under_the_entry_lock() {
    let mut f = fx(Quirks::fixed());
    for g in &data_entries(&f.w)[..3] {
        let v = mem(&f.w, *g);
        f.w.machine.mem.write_u64(*g, v | A);
    }
    f.code(&[0x48, 0x8B, 0x18]);
    f.w.vcpus[0].set_reg(Gpr::Rax, DATA);
    let pte = f.get(0) & !(A | D);
    f.set(0, pte);
    set_lock(&mut f.w, 0x1F0, true);
    let e0 = f.e(0);
    raise_only(&mut f.w, 0, QUAL_WALK, DATA, e0);
    to_step(&mut f.w, 0, rip::PW_LEAF);
    for _ in 0..3 {
        f.w.step(0).unwrap();
        assert_eq!(f.w.vcpus[0].rip, agent_at(rip::PW_LEAF));
        assert_eq!(f.get(0), pte);
    }
    set_lock(&mut f.w, 0x1F0, false);
    f.w.step(0).unwrap();
    assert_eq!(f.get(0), pte | A);
    assert_eq!(locks(&f.w), [0; 8]);
}

/// B66: nothing left to set and a user-half GLA (bit 63 clear): Raised and RAISE_EPT (the KPTI
/// case); a kernel GLA just returns. Page walks never move RIP or the registers.
#[test]
fn b66_kpti_raise_only_for_user_gla() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut f = fx(q);
        let e = map_user_page(&mut f.w);
        for g in e {
            let v = mem(&f.w, g);
            f.w.machine.mem.write_u64(g, v | A);
        }
        f.w.machine.mem.write_u64(e[3], mem(&f.w, e[3]) | D);
        // Bit 6 of a non-leaf entry is ignored by hardware, and the agent's own self-map
        // accesses (the CAS of B65 is a write) may set it there: compare the other bits.
        let snap = |w: &World| -> Vec<u64> {
            e.iter()
                .enumerate()
                .map(|(i, g)| mem(w, *g) & if i < 3 { !D } else { !0 })
                .collect()
        };
        let before = snap(&f.w);
        f.code(&[0x48, 0x8B, 0x18]);
        f.w.vcpus[0].set_reg(Gpr::Rax, USER_PAGE);
        inject(&mut f.w, 0, QUAL_WALK, USER_PAGE, e[3]);
        assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 0, 0)]);
        assert_eq!(outcomes(&f.w), [(AgentOutcome::PageWalkRaised, None)]);
        assert_eq!(raised_byte(&f.w, 0), 1);
        assert_eq!(before, snap(&f.w));
        assert_eq!(f.w.vcpus[0].rip, CODE);
        assert_eq!(f.w.vcpus[0].reg(Gpr::Rax), USER_PAGE);
        // The same for a kernel page: no raise.
        let d = data_entries(&f.w);
        for g in d {
            let v = mem(&f.w, g);
            f.w.machine.mem.write_u64(g, v | A | D);
        }
        f.w.vcpus[0].set_reg(Gpr::Rax, DATA);
        inject(&mut f.w, 0, QUAL_WALK, DATA, d[3]);
        assert_eq!(vmcalls(&f.w).len(), 1);
        assert_eq!(outcomes(&f.w)[1], (AgentOutcome::PageWalkSet, None));
    }
}

/// B67/B30: VePageWalk counts every page-walk #VE, raised ones included; a raised walk is not
/// ignored and not timed; early exits count as ignored.
#[test]
fn b67_page_walk_counters() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut f = fx(q);
        let e = map_user_page(&mut f.w);
        for g in e {
            let v = mem(&f.w, g);
            f.w.machine.mem.write_u64(g, v | A | D);
        }
        f.code(&[0x48, 0x8B, 0x18]);
        inject(&mut f.w, 0, QUAL_WALK, USER_PAGE, e[3]); // raised
        let e0 = f.e(0);
        let pte = f.get(0) & !(A | D);
        f.set(0, pte);
        inject(&mut f.w, 0, QUAL_WALK, DATA, e0); // sets A
        let pml4e = Gpa(f.w.guest.cr3 + 4 * 8);
        inject(&mut f.w, 0, QUAL_WALK, 0x0000_0200_0000_0000, pml4e); // early exit
        assert_eq!(
            [
                veinfo::VE_TOTAL,
                veinfo::VE_PAGE_WALK,
                veinfo::VE_MM,
                veinfo::VE_IGNORED_TOTAL,
                veinfo::TSC_COUNT
            ]
            .map(|o| pg(&f.w, 0, o)),
            [3, 3, 0, 2, 2]
        );
    }
}

// =============================================================================================
// 5. The VE cache (B70–B76)
// =============================================================================================

fn cache_slot(line: u64, bucket: u64, slot: u64) -> Gpa {
    layout::AGENT_GPA.wrapping_add(layout::AGENT_VECACHE + line * 0x1000 + bucket * 64 + slot * 8)
}

/// B70: 64 lines × 64 buckets × 8 slots; line = (GPA >> 12) & 63, bucket = (GPA >> 3) & 63,
/// keyed by the entry's GPA.
#[test]
fn b70_cache_geometry() {
    assert_eq!(
        layout::AGENT_SIZE - layout::AGENT_VECACHE,
        64 * 0x1000,
        "64 pages"
    );
    let mut w = World::new(config(Quirks::fixed())).unwrap();
    let e = Gpa(0x0123_4568); // line 0x34, bucket 0xAD & 63 = 0x2D
    w.update_cache(e, false);
    w.update_cache(e.wrapping_add(0x200), false); // 64 entries on: same bucket
    w.update_cache(e.wrapping_add(0x4_0000), false); // 64 pages on: same line and bucket
    w.update_cache(e.wrapping_add(0x1000), false); // next line
    assert_eq!(mem(&w, cache_slot(0x34, 0x2D, 0)), e.0);
    assert_eq!(mem(&w, cache_slot(0x34, 0x2D, 1)), e.0 + 0x200);
    assert_eq!(mem(&w, cache_slot(0x34, 0x2D, 2)), e.0 + 0x4_0000);
    assert_eq!(mem(&w, cache_slot(0x35, 0x2D, 0)), e.0 + 0x1000);
}

/// B71: the agent scans all 8 slots of the entry's bucket for an exact match.
#[test]
fn b71_lookup_scans_the_eight_slots_of_the_bucket() {
    let mut f = fx(Quirks::fixed());
    let e1 = f.e(1);
    let (line, bucket) = ((e1.0 >> 12) & 63, (e1.0 >> 3) & 63);
    f.w.machine.mem.write_u64(cache_slot(line, bucket, 7), e1.0);
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(outcomes(&f.w), [(AgentOutcome::IgnoredCache, None)]);
    // In the neighbouring bucket it does not count.
    let mut f = fx(Quirks::fixed());
    f.w.machine
        .mem
        .write_u64(cache_slot(line, (bucket + 1) % 64, 0), e1.0);
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(outcomes(&f.w), [(AgentOutcome::Raised, None)]);
}

/// B72: updates do nothing unless the agent is deployed; adds do nothing once unload is pending.
#[test]
fn b72_updates_only_while_deployed() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut w = World::new(config(q)).unwrap();
        let e = Gpa(0x0123_4568);
        w.intro.deployed = false;
        w.update_cache(e, false);
        assert!(!w.cache_contains(e));
        w.intro.deployed = true;
        w.intro.pending_unload = true;
        w.update_cache(e, false);
        assert!(!w.cache_contains(e));
        w.intro.pending_unload = false;
        w.update_cache(e, false);
        assert!(w.cache_contains(e));
    }
}

/// B73: a removal empties the first slot equal to the address only.
#[test]
fn b73_remove_first_match_only() {
    for (q, empty) in [(Quirks::fixed(), u64::MAX), (Quirks::hvmi(), 0)] {
        let mut w = World::new(config(q)).unwrap();
        let e = Gpa(0x0123_4568);
        w.machine.mem.write_u64(cache_slot(0x34, 0x2D, 2), e.0);
        w.machine.mem.write_u64(cache_slot(0x34, 0x2D, 5), e.0);
        w.update_cache(e, true);
        assert_eq!(mem(&w, cache_slot(0x34, 0x2D, 2)), empty);
        assert_eq!(mem(&w, cache_slot(0x34, 0x2D, 5)), e.0);
        assert!(w.cache_contains(e));
    }
}

/// B74: an add does nothing if present; else slot = the bucket's fill counter while below 8,
/// then a random slot.
#[test]
fn b74_counter_then_random() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut w = World::new(config(q)).unwrap();
        let e = |k: u64| Gpa(0x0123_4568 + (k << 18)); // same line and bucket
        for k in 0..8 {
            w.update_cache(e(k), false);
        }
        for k in 0..8 {
            assert_eq!(mem(&w, cache_slot(0x34, 0x2D, k)), e(k).0, "slot {k}");
        }
        w.update_cache(e(3), false);
        assert_eq!(w.intro.cache.stats.inserts, 8, "already present");
        w.update_cache(e(8), false);
        assert_eq!(w.intro.cache.stats.random_replacements, 1);
        assert!(w.cache_contains(e(8)));
        assert_eq!((0..8).filter(|k| w.cache_contains(e(*k))).count(), 7);
    }
}

/// B75: a raise on an unmonitored entry adds it and the next 7 entries whose own list is
/// empty, never past entry 511; no callback runs.
#[test]
fn b75_adds_entry_and_next_seven_unmonitored() {
    let mut f = fx(Quirks::fixed());
    let e3 = f.e(3);
    f.w.place_monitor(e3);
    f.w.commit_hooks();
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    for k in 0..10 {
        let want = matches!(k, 1 | 2 | 4 | 5 | 6 | 7 | 8);
        assert_eq!(f.w.cache_contains(f.e(k)), want, "entry {k}");
    }
    assert!(callbacks(&f.w).is_empty());
    f.mov_entry(0, 2, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(outcomes(&f.w)[1], (AgentOutcome::IgnoredCache, None));
    f.mov_entry(0, 510, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(vmcalls(&f.w).len(), 2);
    assert!(f.w.cache_contains(f.e(510)) && f.w.cache_contains(f.e(511)));
    assert!(!f.w.cache_contains(f.e(509)));
    assert!(!f.w.cache_contains(f.e(512)), "not past the table");
}

/// B76: the first monitor on an entry evicts it; removing the last one does not re-add it, so
/// relevant writes raise until a raise caches it again.
#[test]
fn b76_first_monitor_evicts() {
    let mut f = fx(Quirks::fixed());
    let e1 = f.e(1);
    f.w.update_cache(e1, false);
    assert!(f.w.cache_contains(e1));
    let m = f.w.place_monitor(e1);
    f.w.commit_hooks();
    assert!(!f.w.cache_contains(e1));
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(callbacks(&f.w), [(e1, 0, OLD)]);
    f.w.remove_monitor(m);
    f.w.commit_hooks();
    assert!(!f.w.cache_contains(e1));
    f.mov_entry(0, 1, OLD ^ RW);
    one_ve(&mut f.w, 0);
    assert_eq!(vmcalls(&f.w).len(), 2, "raised again");
    assert!(f.w.cache_contains(e1));
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(outcomes(&f.w)[2], (AgentOutcome::IgnoredCache, None));
    assert_eq!(callbacks(&f.w).len(), 1);
}

// =============================================================================================
// 6. Introcore lifecycle (B82, B87–B94)
// =============================================================================================

/// B82: the protected view is RW- and not convertible for every guest-physical page.
#[test]
fn b82_protected_view_rw_and_not_convertible() {
    let f = fx(Quirks::fixed());
    let want = EptFlags::READ | EptFlags::WRITE | EptFlags::SUPPRESS_VE;
    for g in [
        Gpa(0),
        Gpa(f.w.guest.cr3),
        f.pt,
        phys(&f.w, DATA),
        f.code,
        Gpa(0x3FFF_F000),
        layout::AGENT_GPA,
    ] {
        assert_eq!(
            protected_flags(&f.w, g) & (RWX | EptFlags::SUPPRESS_VE),
            want,
            "{g}"
        );
    }
}

/// B87 (with B4, B11, B13, B20/B22, B78): what deploy writes into the image and the VCPUs.
#[test]
fn b87_deploy_patches_the_image_and_registers_the_pages() {
    for (q, unused_slot, empty_slot, bits) in [
        (
            Quirks::fixed(),
            0xFFFF_FFFFu32,
            u64::MAX,
            0x800F_FFFF_FFFF_F087u64,
        ),
        (Quirks::hvmi(), 0, 0, 0x000F_FFFF_FFFF_F087),
    ] {
        let mut c = config(q);
        c.guest.vcpus = 2;
        c.guest.protected_view = ViewId(5);
        let w = World::new(c).unwrap();
        let m = &w.machine.mem;
        let at = |off: u64| layout::AGENT_GPA.wrapping_add(off);
        assert_eq!(m.read_u32(at(layout::STUB_PROTECTED_INDEX_IMM)), 5);
        assert_eq!(m.read_u32(at(layout::STUB_UNTRUSTED_INDEX_IMM)), 0);
        assert_eq!(m.read_u32(at(layout::DATA_SELF_MAP_INDEX)), 0x1ED);
        assert_eq!(m.read_u64(at(layout::DATA_MONITORED_BITS)), bits);
        let mut slot = [0u8; 24];
        m.read(at(layout::STUB_KI_KERNEL_EXIT_SLOT), &mut slot);
        assert_eq!(slot, [0x90; 24], "no KPTI: 24 NOPs");
        // The retpoline to VESTUB's entry 0xFFFFF88000001000 at the OS #VE handler.
        let mut hook = [0u8; 24];
        m.read(phys(&w, layout::OS_VE_HANDLER_GVA), &mut hook);
        assert_eq!(
            hook,
            [
                0xE8, 0x03, 0x00, 0x00, 0x00, 0x0F, 0xAE, 0xE8, 0xC7, 0x04, 0x24, 0x00, 0x10, 0x00,
                0x00, 0xC7, 0x44, 0x24, 0x04, 0x80, 0xF8, 0xFF, 0xFF, 0xC3
            ]
        );
        // B11: VCPU i at the slot of its index (i with the default descriptors).
        for s in 0..64u64 {
            let want = match s {
                0 => 0,
                1 => 1,
                _ => unused_slot,
            };
            assert_eq!(
                m.read_u32(at(layout::AGENT_CPUMAP + 4 * s)),
                want,
                "slot {s}"
            );
        }
        for i in 0..2u64 {
            let page = at(layout::AGENT_VEINFO + 0x1000 * i);
            assert_eq!(w.vcpus[i as usize].ve_info, Some(page));
            assert!(w.vcpus[i as usize].ve_enabled);
            assert_eq!(
                m.read_u64(page.wrapping_add(veinfo::PROTECTED_STACK)),
                layout::AGENT_GVA + layout::AGENT_VESTACKS + 0x4000 * i + 0x4000 - 16
            );
            assert_eq!(
                m.read_u64(page.wrapping_add(veinfo::SELF)),
                layout::AGENT_GVA + layout::AGENT_VEINFO + 0x1000 * i
            );
            assert_eq!(m.read_u64(page.wrapping_add(veinfo::INDEX)), i);
        }
        for line in [0u64, 31, 63] {
            for b in [0u64, 63] {
                assert_eq!(m.read_u64(cache_slot(line, b, 7)), empty_slot);
            }
        }
    }
}

/// B89: in the untrusted view VESTUB is execute-only and every other agent page (header and
/// sections) has no access; none of them is convertible.
#[test]
fn b89_untrusted_view_rights_of_agent() {
    let w = World::new(config(Quirks::fixed())).unwrap();
    for off in (0..layout::AGENT_SIZE).step_by(0x1000) {
        let g = layout::AGENT_GPA.wrapping_add(off);
        let f = untrusted_flags(&w, g);
        let want = if off == layout::AGENT_VESTUB {
            EptFlags::EXECUTE
        } else {
            EptFlags::empty()
        };
        assert_eq!(f & RWX, want, "agent page {off:#x}");
        assert!(f.contains(EptFlags::SUPPRESS_VE), "agent page {off:#x}");
    }
    let h = w.hook_counts(layout::AGENT_GPA);
    assert_eq!((h.read, h.write, h.execute), (1, 1, 1), "header");
}

/// B90: in the protected view each section page is R, W by the section's write characteristic
/// and X by its execute characteristic; the header keeps RW- (B82).
#[test]
fn b90_protected_view_rights() {
    let w = World::new(config(Quirks::fixed())).unwrap();
    let rx = EptFlags::READ | EptFlags::EXECUTE;
    let rw = EptFlags::READ | EptFlags::WRITE;
    for off in (0..layout::AGENT_SIZE).step_by(0x1000) {
        let want = match off {
            layout::AGENT_VESTUB | layout::AGENT_CODE => rx,
            _ => rw, // header, .data, VECPUMAP, VEINFO, VESTACKS, VECACHE
        };
        let f = protected_flags(&w, layout::AGENT_GPA.wrapping_add(off));
        assert_eq!(f & RWX, want, "agent page {off:#x}");
        assert!(f.contains(EptFlags::SUPPRESS_VE));
    }
}

/// B93/B94: page-table pages become convertible only when the loader completes
/// (ConvCount += PtCount); disabling makes them non-convertible again (ConvCount 0).
#[test]
fn b94_convertible_only_after_loader() {
    let mut f = fx_with(WorldConfig {
        ve: false,
        ..config(Quirks::fixed())
    });
    let pt = f.pt;
    assert!(!untrusted_flags(&f.w, pt).contains(EptFlags::WRITE));
    assert!(untrusted_flags(&f.w, pt).contains(EptFlags::SUPPRESS_VE));
    let c = f.w.hook_counts(pt);
    assert_eq!((c.pt, c.conv), (1, 0));
    f.mov_entry(0, 1, 0x200);
    run_to(&mut f.w, 0, CODE + 3, 20);
    assert_eq!(f.w.counters.ve_total, 0);
    assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    f.w.complete_loader();
    assert!(!untrusted_flags(&f.w, pt).contains(EptFlags::SUPPRESS_VE));
    let c = f.w.hook_counts(pt);
    assert_eq!((c.pt, c.conv), (1, 1));
    f.mov_entry(0, 1, 0x400);
    one_ve(&mut f.w, 0);
    assert_eq!(f.w.counters.ve_total, 1);
    f.w.intro.hooks.disable_ve(&mut f.w.machine.ept);
    assert!(untrusted_flags(&f.w, pt).contains(EptFlags::SUPPRESS_VE));
    assert_eq!(f.w.hook_counts(pt).conv, 0);
}

// =============================================================================================
// 7. VMCALL dispatch and IntDispatchVeAsEpt (B102–B114)
// =============================================================================================

/// B102: hook removals are committed at the end of the VMCALL (step 6).
#[test]
fn b102_removals_committed_at_the_end_of_the_vmcall() {
    let mut f = fx(Quirks::fixed());
    let pt = f.pt;
    for id in f.w.intro.ptm.monitors(pt.wrapping_add(256 * 8)) {
        f.w.remove_monitor(id);
    }
    assert!(
        !untrusted_flags(&f.w, pt).contains(EptFlags::WRITE),
        "deferred"
    );
    f.mov_entry(0, 2, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 0, 0)]);
    let fl = untrusted_flags(&f.w, pt);
    assert!(fl.contains(EptFlags::WRITE) && fl.contains(EptFlags::SUPPRESS_VE));
    assert_eq!(f.w.hook_counts(pt), Default::default());
    f.mov_entry(0, 2, OLD ^ RW);
    run_to(&mut f.w, 0, CODE + 3, 5);
    assert_eq!(f.w.counters.ve_total, 1, "the table is no longer protected");
    assert_eq!(f.get(2), OLD ^ RW);
}

/// B102 (a): only a VMCALL whose RIP is inside the agent reaches the #VE hypercall handler.
#[test]
fn b102_raise_from_outside_the_agent_is_not_dispatched() {
    let mut f = fx(Quirks::fixed());
    let e1 = f.e(1);
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    // A pending raise in the page, as the agent would leave it.
    let w = &mut f.w;
    pg_set(w, 0, 0x08, QUAL_WRITE);
    pg_set(w, 0, 0x10, egla(1));
    pg_set(w, 0, 0x18, e1.0);
    pg_set(w, 0, veinfo::OLD_VALUE, 0);
    pg_set(w, 0, veinfo::NEW_VALUE, OLD);
    f.code(&[0x0F, 0x01, 0xC1]); // vmcall
    let v = &mut f.w.vcpus[0];
    v.set_reg(Gpr::Rax, 0x22);
    v.set_reg(Gpr::Rdi, 0x18);
    v.set_reg(Gpr::Rsi, 0);
    v.set_reg(Gpr::Rdx, RAISE_EPT);
    run_to(&mut f.w, 0, CODE + 3, 2);
    assert!(callbacks(&f.w).is_empty());
    assert_eq!(f.get(1), 0);
}

/// B103: NOP, BREAK, TRACE and unknown numbers change nothing in the guest; RAISE_EPT
/// dispatches.
#[test]
fn b103_hypercall_numbers() {
    let mut f = fx(Quirks::fixed());
    let e1 = f.e(1);
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    let w = &mut f.w;
    pg_set(w, 0, 0x08, QUAL_WRITE);
    pg_set(w, 0, 0x10, egla(1));
    pg_set(w, 0, 0x18, e1.0);
    pg_set(w, 0, veinfo::NEW_VALUE, OLD);
    let at = agent_at(rip::H_BREAK);
    for rdx in [NOP, BREAK, TRACE, 7, RAISE_EPT] {
        let v = &mut w.vcpus[0];
        v.rip = at;
        v.set_reg(Gpr::Rax, 0x22);
        v.set_reg(Gpr::Rdi, 0x18);
        v.set_reg(Gpr::Rsi, 0);
        v.set_reg(Gpr::Rdx, rdx);
        let before = w.machine.clone();
        w.hypercall(0);
        assert_eq!(w.vcpus[0].rip, at + 3);
        assert_eq!(w.counters.vmcalls.get(&rdx), Some(&1));
        if rdx == RAISE_EPT {
            assert_eq!(callbacks(w), [(e1, 0, OLD)]);
        } else {
            assert!(w.machine == before, "call {rdx} changed the machine");
            assert!(callbacks(w).is_empty());
        }
    }
}

/// B108/B134: old and new come from the page (0x210/0x218), not from guest memory.
#[test]
fn b134_old_and_new_come_from_the_info_page() {
    let mut f = fx(Quirks::hvmi());
    let e1 = f.e(1);
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    f.mov_entry(0, 1, OLD);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::PT_RAISE);
    pg_set(&mut f.w, 0, veinfo::OLD_VALUE, 0x5000_0001);
    pg_set(&mut f.w, 0, veinfo::NEW_VALUE, 0x6000_0003);
    f.w.step(0).unwrap();
    assert_eq!(callbacks(&f.w), [(e1, 0x5000_0001, 0x6000_0003)]);
    f.w.run_agent(0, 100).unwrap();
    assert_eq!(f.get(1), 0x6000_0003);
}

/// B105: the dispatch takes the GPA (and GLA, qualification) from the page, not from the
/// instruction: a GPA rewritten in the page before the raise is the entry introcore reports
/// and patches (B109), while the agent still stores at the GLA.
#[test]
fn b105_dispatch_takes_the_gpa_from_the_page() {
    let mut f = fx(Quirks::fixed());
    let (e1, e2) = (f.e(1), f.e(2));
    f.w.place_monitor(e1);
    f.w.place_monitor(e2);
    f.w.commit_hooks();
    f.mov_entry(0, 1, OLD);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::PT_RAISE);
    pg_set(&mut f.w, 0, 0x18, e2.0);
    f.w.run_agent(0, 100).unwrap();
    assert_eq!(callbacks(&f.w), [(e2, 0, OLD)]);
    assert_eq!((f.get(1), f.get(2)), (OLD, OLD));
}

/// B109: introcore writes NewValue into guest memory during the raise, before the agent's own
/// store.
#[test]
fn b109_new_value_written_before_callbacks() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut f = fx(q);
        let e1 = f.e(1);
        f.w.place_monitor(e1);
        f.w.commit_hooks();
        f.mov_entry(0, 1, OLD);
        deliver(&mut f.w, 0);
        to_step(&mut f.w, 0, rip::PT_STORE);
        assert_eq!(callbacks(&f.w), [(e1, 0, OLD)]);
        assert_eq!(f.get(1), OLD, "already in memory before the agent's store");
    }
}

/// B114/B138: the callbacks of the written entry's monitors run, in placement order; a monitor
/// whose removal is pending is skipped; other entries' monitors do not run.
#[test]
fn b114_callbacks_of_the_written_entry_only_in_order() {
    let mut f = fx(Quirks::fixed());
    let (e1, e2) = (f.e(1), f.e(2));
    let a = f.w.place_monitor(e1);
    let b = f.w.place_monitor(e1);
    let c = f.w.place_monitor(e2);
    f.w.commit_hooks();
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    let got: Vec<_> =
        f.w.intro
            .callbacks
            .iter()
            .map(|r| (r.monitor, r.old, r.new))
            .collect();
    assert_eq!(got, [(a, 0, OLD), (b, 0, OLD)]);
    assert!(f.w.intro.callbacks.iter().all(|r| r.monitor != c));
    f.w.remove_monitor(a);
    f.mov_entry(0, 1, OLD ^ RW);
    one_ve(&mut f.w, 0);
    let last = f.w.intro.callbacks.last().unwrap();
    assert_eq!((last.monitor, last.old, last.new), (b, OLD, OLD ^ RW));
    assert_eq!(f.w.intro.callbacks.len(), 3);
}

// =============================================================================================
// 9–10. hook_gpa and hook_ptm (B123–B132)
// =============================================================================================

use vesim::introcore::hooks::{HookCounts, HookKind};

const READ_HOOK: HookKind = HookKind {
    read: true,
    write: false,
    execute: false,
    page_table: false,
};
const WRITE_HOOK: HookKind = HookKind {
    read: false,
    write: true,
    execute: false,
    page_table: false,
};
const EXEC_HOOK: HookKind = HookKind {
    read: false,
    write: false,
    execute: true,
    page_table: false,
};

fn set_hook(w: &mut World, g: Gpa, k: HookKind) {
    w.intro.hooks.set(&mut w.machine.ept, g.gfn(), k);
}

/// B123: one HOOK_EPT_ENTRY per page with R/W/X/Pt/Conv counts, freed when R+W+X+Pt is 0.
#[test]
fn b123_counts_per_page_freed_at_zero() {
    let mut f = fx(Quirks::fixed());
    let g = phys(&f.w, DATA);
    assert_eq!(
        f.w.hook_counts(f.pt),
        HookCounts {
            read: 0,
            write: 1,
            execute: 0,
            pt: 1,
            conv: 1
        }
    );
    set_hook(&mut f.w, g, READ_HOOK);
    set_hook(&mut f.w, g, WRITE_HOOK);
    set_hook(&mut f.w, g, EXEC_HOOK);
    set_hook(&mut f.w, g, HookKind::PAGE_TABLE_WRITE);
    assert_eq!(
        f.w.hook_counts(g),
        HookCounts {
            read: 1,
            write: 2,
            execute: 1,
            pt: 1,
            conv: 1
        }
    );
    for k in [READ_HOOK, WRITE_HOOK, EXEC_HOOK, HookKind::PAGE_TABLE_WRITE] {
        f.w.intro.hooks.remove(g.gfn(), k);
    }
    f.w.commit_hooks();
    assert_eq!(f.w.hook_counts(g), HookCounts::default());
    assert!(f.w.intro.hooks.pages().all(|(p, _)| p != g.gfn()), "freed");
}

/// B124: untrusted rights are R = (ReadCount == 0), W = (WriteCount == 0), X = (ExecuteCount ==
/// 0), written only when a count goes 0→1 on set or 1→0 on the removal commit.
#[test]
fn b124_rights_follow_counts() {
    let mut f = fx(Quirks::fixed());
    let g = phys(&f.w, DATA);
    let untrusted = f.w.intro.untrusted;
    assert_eq!(untrusted_flags(&f.w, g) & RWX, RWX, "fresh page");
    set_hook(&mut f.w, g, WRITE_HOOK);
    assert_eq!(
        untrusted_flags(&f.w, g) & RWX,
        EptFlags::READ | EptFlags::EXECUTE
    );
    // Somebody else changes the entry; a 1→2 set does not rewrite it.
    f.w.machine
        .ept
        .view_mut(untrusted)
        .unwrap()
        .set_rights(g.gfn(), EptFlags::EXECUTE);
    set_hook(&mut f.w, g, WRITE_HOOK);
    assert_eq!(untrusted_flags(&f.w, g) & RWX, EptFlags::EXECUTE);
    f.w.intro.hooks.remove(g.gfn(), WRITE_HOOK);
    f.w.commit_hooks();
    assert_eq!(untrusted_flags(&f.w, g) & RWX, EptFlags::EXECUTE, "2→1");
    f.w.intro.hooks.remove(g.gfn(), WRITE_HOOK);
    f.w.commit_hooks();
    assert_eq!(untrusted_flags(&f.w, g) & RWX, RWX, "1→0 writes the counts");
    set_hook(&mut f.w, g, READ_HOOK);
    set_hook(&mut f.w, g, EXEC_HOOK);
    assert_eq!(untrusted_flags(&f.w, g) & RWX, EptFlags::WRITE);
}

/// B125: a page-table hook counts PtCount and, with #VE enabled, ConvCount; ConvCount 0→1 makes
/// the page convertible. Other hooks never do.
#[test]
fn b125_pt_hook_marks_convertible() {
    let mut f = fx(Quirks::fixed());
    let g = phys(&f.w, DATA);
    set_hook(&mut f.w, g, WRITE_HOOK);
    assert!(untrusted_flags(&f.w, g).contains(EptFlags::SUPPRESS_VE));
    set_hook(&mut f.w, g, HookKind::PAGE_TABLE_WRITE);
    assert!(!untrusted_flags(&f.w, g).contains(EptFlags::SUPPRESS_VE));
    set_hook(&mut f.w, g, HookKind::PAGE_TABLE_WRITE);
    let c = f.w.hook_counts(g);
    assert_eq!((c.pt, c.conv), (2, 2));
}

/// B126: removal is deferred: counts, rights and convertibility change only at the commit; the
/// last page-table hook's commit makes the page non-convertible.
#[test]
fn b126_removal_deferred_until_commit() {
    let mut f = fx(Quirks::fixed());
    let g = phys(&f.w, DATA);
    set_hook(&mut f.w, g, HookKind::PAGE_TABLE_WRITE);
    set_hook(&mut f.w, g, HookKind::PAGE_TABLE_WRITE);
    f.w.intro.hooks.remove(g.gfn(), HookKind::PAGE_TABLE_WRITE);
    f.w.intro.hooks.remove(g.gfn(), HookKind::PAGE_TABLE_WRITE);
    let c = f.w.hook_counts(g);
    assert_eq!((c.write, c.pt, c.conv), (2, 2, 2), "not yet");
    let fl = untrusted_flags(&f.w, g);
    assert!(!fl.contains(EptFlags::WRITE) && !fl.contains(EptFlags::SUPPRESS_VE));
    f.w.commit_hooks();
    assert_eq!(f.w.hook_counts(g), HookCounts::default());
    let fl = untrusted_flags(&f.w, g);
    assert!(fl.contains(EptFlags::WRITE) && fl.contains(EptFlags::SUPPRESS_VE));
}

/// B127: "convertible" is suppress-#VE clear; a write to such a page in the untrusted view is a
/// #VE (not an exit) when the semaphore is 0.
#[test]
fn b127_convertible_is_suppress_ve_clear() {
    let mut f = fx(Quirks::fixed());
    let pt = f.pt;
    assert!(!untrusted_flags(&f.w, pt).contains(EptFlags::SUPPRESS_VE));
    assert!(untrusted_flags(&f.w, phys(&f.w, DATA)).contains(EptFlags::SUPPRESS_VE));
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(f.w.counters.ve_total, 1);
    assert_eq!(f.w.counters.exits.get(&48), None);
}

/// B131: one write GPA hook (PAGING_STRUCTURE) per table page whatever the number of monitored
/// entries; it goes with the last monitor (at the commit).
#[test]
fn b131_one_write_hook_per_table() {
    let mut f = fx(Quirks::fixed());
    let pt = f.pt;
    let m5 = f.w.place_monitor(f.e(5));
    let m6 = f.w.place_monitor(f.e(6));
    f.w.commit_hooks();
    let c = f.w.hook_counts(pt);
    assert_eq!((c.write, c.pt), (1, 1));
    f.w.remove_monitor(m5);
    f.w.remove_monitor(m6);
    f.w.commit_hooks();
    assert_eq!(f.w.hook_counts(pt).write, 1, "entry 256 still monitored");
    for id in f.w.intro.ptm.monitors(pt.wrapping_add(256 * 8)) {
        f.w.remove_monitor(id);
    }
    f.w.commit_hooks();
    assert_eq!(f.w.hook_counts(pt), HookCounts::default());
    assert!(untrusted_flags(&f.w, pt).contains(EptFlags::WRITE));
}

/// B132: the entry is (addr & 0xFFF) >> 3: an entry with monitors gets its callbacks (and is not
/// cached); an entry with none is cache-added with no callback.
#[test]
fn b132_write_callback_by_entry_offset() {
    let mut f = fx(Quirks::fixed());
    let (e1, e2) = (f.e(1), f.e(2));
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    f.mov_entry(0, 2, OLD);
    one_ve(&mut f.w, 0);
    assert!(callbacks(&f.w).is_empty());
    assert!(f.w.cache_contains(e2));
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(callbacks(&f.w), [(e1, 0, OLD)]);
    assert!(!f.w.cache_contains(e1));
}

// =============================================================================================
// Q. Quirks, each in both settings (VE-SEMANTICS section 2)
// =============================================================================================

/// Q1 `hvmi`: an unsupported write breaks (BREAK, EMULATION_FAILED) and returns with RIP
/// unchanged, so the same write #VEs again, forever.
#[test]
fn q1_break_loop_hvmi() {
    let mut f = fx(Quirks::hvmi());
    let e1 = f.e(1);
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    f.set(1, OLD);
    f.code(&[0x89, 0x18]); // mov [rax], ebx: 4 bytes
    f.w.vcpus[0].set_reg(Gpr::Rax, egla(1));
    f.w.vcpus[0].set_reg(Gpr::Rbx, 0x0123_5063);
    for n in 1..=3usize {
        one_ve(&mut f.w, 0);
        assert_eq!(f.w.vcpus[0].rip, CODE, "#VE {n}");
        assert_eq!(f.get(1), OLD);
        assert_eq!(
            vmcalls(&f.w),
            vec![(BREAK, BREAK_EMULATION_FAILED, ST_NOT_SUPPORTED); n]
        );
        assert_eq!(ves(&f.w), vec![(QUAL_WRITE, egla(1), e1.0); n]);
    }
    assert!(callbacks(&f.w).is_empty());
    assert_eq!(f.w.counters.rejected, 3);
}

/// Q1 `fixed`: the agent, holding its lock, asks introcore to emulate (RAISE_EPT, RBX = 1);
/// introcore runs the callbacks, writes the entry and the saved RIP; one #VE.
#[test]
fn q1_break_loop_fixed() {
    let mut f = fx(Quirks::fixed());
    let e1 = f.e(1);
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    f.set(1, OLD);
    f.code(&[0x89, 0x18]);
    f.w.vcpus[0].set_reg(Gpr::Rax, egla(1));
    f.w.vcpus[0].set_reg(Gpr::Rbx, 0xFFFF_FFFF_0123_5063);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::PT_EMU_REQUEST);
    assert!(
        lock_held(&f.w, 0x1F0),
        "the request is made under the B41 lock"
    );
    f.w.run_agent(0, 1000).unwrap();
    run_to(&mut f.w, 0, CODE + 2, 5);
    // SDM: MOV r/m32 stores the low 32 bits only.
    let new = 0x0000_0000_0123_5063;
    let r = reference(
        &[0x89, 0x18],
        &[(Gpr::Rax, G), (Gpr::Rbx, 0xFFFF_FFFF_0123_5063)],
        FIXED1,
        &[(G, OLD)],
    );
    assert_eq!(r.mem[&G], new);
    assert_eq!(f.get(1), new);
    assert_eq!(f.w.counters.ve_total, 1);
    assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 1, 0)]);
    assert_eq!(
        outcomes(&f.w),
        [(AgentOutcome::EmulatedByIntrocore, Some(RejectReason::Size))]
    );
    assert_eq!(callbacks(&f.w), [(e1, OLD, new)]);
    assert_eq!(locks(&f.w), [0; 8]);
    assert_eq!(f.w.vcpus[0].reg(Gpr::Rbx), 0xFFFF_FFFF_0123_5063);
    // Other refusals of instructions in the reference CPU's set go the same way.
    let regs = [(Gpr::Rax, G), (Gpr::Rbx, OLD ^ RW)];
    let mut seg = vreq(Profile::Fixed, &[0x3E, 0x48, 0x89, 0x18], &regs, OLD);
    let mut user = vreq(Profile::Fixed, &[0x48, 0x89, 0x18], &regs, OLD);
    user.cs = 0x33;
    seg.cs = 0x10;
    for (r, reason) in [
        (seg, RejectReason::SegmentPrefix),
        (user, RejectReason::CsNotKernel),
    ] {
        let v = verdict(&r);
        assert_eq!(v.outcome, Some(AgentOutcome::EmulatedByIntrocore), "{v:?}");
        assert_eq!(v.reason, Some(reason));
        assert_eq!(v.vmcalls, [(RAISE_EPT, 1, 0)]);
        assert_eq!(v.entry, OLD ^ RW);
        assert_eq!(v.rip, layout::VERDICT_DEFAULT_RIP + r.bytes.len() as u64);
    }
}

/// Q1 `fixed`: outside the reference CPU's set introcore answers Unsupported; the agent counts
/// it `rejected`, stores nothing and leaves RIP.
#[test]
fn q1_break_loop_fixed_outside_the_reference_set() {
    let mut f = fx(Quirks::fixed());
    f.set(1, OLD);
    f.code(&[0x48, 0x01, 0x18]); // add [rax], rbx
    f.w.vcpus[0].set_reg(Gpr::Rax, egla(1));
    f.w.vcpus[0].set_reg(Gpr::Rbx, 0x1000);
    one_ve(&mut f.w, 0);
    assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 1, 0)]);
    assert_eq!(
        outcomes(&f.w),
        [(
            AgentOutcome::Rejected,
            Some(RejectReason::UnsupportedInstruction)
        )]
    );
    assert_eq!((f.get(1), f.w.vcpus[0].rip), (OLD, CODE));
    assert_eq!(locks(&f.w), [0; 8]);
}

/// Q1 `fixed` with an irrelevant write: introcore emulates "with the baseline emulator", whose
/// relevance filter (B114: IntHandleMemAccess drops irrelevant PT writes; B133 step 3) means no
/// monitor callback runs and nothing is cache-added (B75: only relevant writes on that path).
#[test]
fn q1_break_loop_fixed_irrelevant_write_runs_no_callback() {
    let mut f = fx(Quirks::fixed());
    let e1 = f.e(1);
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    f.set(1, OLD);
    f.set(2, OLD);
    f.code(&[0x89, 0x18]);
    f.w.vcpus[0].set_reg(Gpr::Rax, egla(1));
    f.w.vcpus[0].set_reg(Gpr::Rbx, OLD | 0x100); // G bit only
    one_ve(&mut f.w, 0);
    assert_eq!(f.get(1), OLD | 0x100);
    assert_eq!(f.w.vcpus[0].rip, CODE + 2);
    assert!(callbacks(&f.w).is_empty(), "{:?}", callbacks(&f.w));
    // The same for an unmonitored entry: nothing cached.
    f.code(&[0x89, 0x18]);
    f.w.vcpus[0].set_reg(Gpr::Rax, egla(2));
    one_ve(&mut f.w, 0);
    assert!(!f.w.cache_contains(f.e(2)));
}

/// Q1 `fixed` with a misaligned 8-byte write that spans entries 1 and 2: it changes RW of the
/// monitored entry 2, so that entry's callback must run (I1, B114: every hook whose range the
/// access meets).
#[test]
fn q1_break_loop_fixed_misaligned_write_reports_the_second_entry() {
    let mut f = fx(Quirks::fixed());
    let e2 = f.e(2);
    f.w.place_monitor(e2);
    f.w.commit_hooks();
    f.set(1, OLD);
    f.set(2, 0x0234_5063);
    f.mov_entry(0, 1, 0x0234_5061_0000_0000);
    f.w.vcpus[0].set_reg(Gpr::Rax, egla(1) + 4);
    one_ve(&mut f.w, 0);
    assert_eq!((f.get(1), f.get(2)), (OLD, 0x0234_5061));
    assert_eq!(f.w.vcpus[0].rip, CODE + 3);
    assert_eq!(callbacks(&f.w), [(e2, 0x0234_5063, 0x0234_5061)]);
}

/// Q4: `bts [rax], rcx` with RCX = 65 addresses the qword at RAX + 8, bit 1 (SDM bit-string
/// addressing); with RCX = -63, the qword at RAX - 8, bit 1.
fn q4_case(profile: Profile, rcx: u64, entry: u64) -> Verdict {
    let regs = [(Gpr::Rax, G), (Gpr::Rcx, rcx)];
    let v = verdict(&vreq(
        profile,
        &[0x48, 0x0F, 0xAB, 0x08],
        &regs,
        0x0123_4061,
    ));
    assert_eq!(v.gla, entry, "the CPU faults on the bit-string address");
    v
}

#[test]
fn q4_bt_mod64_hvmi() {
    for (rcx, entry) in [(65u64, G + 8), ((-63i64) as u64, G - 8)] {
        let v = q4_case(Profile::Hvmi, rcx, entry);
        assert_hvmi_refusal(&v, RejectReason::GlaMismatch, 0x0123_4061);
    }
}

#[test]
fn q4_bt_mod64_fixed() {
    for (rcx, entry) in [(65u64, G + 8), ((-63i64) as u64, G - 8)] {
        let v = q4_case(Profile::Fixed, rcx, entry);
        assert_eq!(v.outcome, Some(AgentOutcome::Raised), "{v:?}");
        assert_eq!((v.new, v.entry), (Some(0x0123_4063), 0x0123_4063));
        assert_eq!(v.rflags & CF, 0, "CF = the old bit 1 = 0");
        let r = reference(
            &[0x48, 0x0F, 0xAB, 0x08],
            &[(Gpr::Rax, G), (Gpr::Rcx, rcx)],
            FIXED1,
            &[(entry, 0x0123_4061)],
        );
        assert_eq!(r.mem[&entry], v.entry);
    }
}

/// Q5: STOSQ stores RAX at [RDI] and (hardware) moves RDI by 8 according to DF; under 0x67 it
/// is EDI that moves, zero-extended.
fn q5_cases() -> [(&'static [u8], u64, u64, u64); 3] {
    // (bytes, RDI, RFLAGS, RDI after on hardware)
    [
        (&[0x48, 0xAB], G, FIXED1, G + 8),
        (&[0x48, 0xAB], G, FIXED1 | DF, G - 8),
        (&[0x67, 0x48, 0xAB], 0x1234_5678_FFFF_FFF8, FIXED1, 0),
    ]
}

#[test]
fn q5_stosq_rdi_hvmi() {
    for (bytes, rdi, fl, _) in q5_cases() {
        let mut r = vreq(Profile::Hvmi, bytes, &[(Gpr::Rdi, rdi), (Gpr::Rax, OLD)], 0);
        r.rflags = fl;
        let v = verdict(&r);
        assert_eq!(v.outcome, Some(AgentOutcome::Raised), "{v:?}");
        assert_eq!(v.entry, OLD);
        assert_eq!(reg(&v, Gpr::Rdi), rdi, "RDI unchanged");
    }
}

#[test]
fn q5_stosq_rdi_fixed() {
    for (bytes, rdi, fl, after) in q5_cases() {
        let mut r = vreq(
            Profile::Fixed,
            bytes,
            &[(Gpr::Rdi, rdi), (Gpr::Rax, OLD)],
            0,
        );
        r.rflags = fl;
        let v = verdict(&r);
        assert_eq!(v.outcome, Some(AgentOutcome::Raised), "{v:?}");
        assert_eq!(v.entry, OLD);
        assert_eq!(reg(&v, Gpr::Rdi), after, "{bytes:02x?} DF {}", fl & DF != 0);
        let rr = reference(
            bytes,
            &[(Gpr::Rdi, rdi), (Gpr::Rax, OLD)],
            fl,
            &[(v.gla, 0)],
        );
        assert_eq!(rr.regs[Gpr::Rdi as usize], after, "reference CPU");
    }
}

/// Q6: where the saved RIP is advanced relative to the raise. A RIP introcore writes during the
/// raise is modelled by writing the page's RIP right after the RAISE_EPT step.
fn q6_run(q: Quirks) -> (u64, u64) {
    let mut f = fx(q);
    f.mov_entry(0, 1, OLD);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::PT_STORE);
    assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 0, 0)]);
    let during = pg(&f.w, 0, veinfo::RIP);
    pg_set(&mut f.w, 0, veinfo::RIP, CODE + 0x40);
    f.w.run_agent(0, 100).unwrap();
    (during, f.w.vcpus[0].rip)
}

#[test]
fn q6_rip_after_raise_hvmi() {
    assert_eq!(q6_run(Quirks::hvmi()), (CODE, CODE + 0x43));
}

#[test]
fn q6_rip_after_raise_fixed() {
    assert_eq!(q6_run(Quirks::fixed()), (CODE + 3, CODE + 0x40));
}

/// Q9: a change of XD alone on a present entry: not monitored in `hvmi` (agent and introcore
/// filter), monitored in `fixed`.
fn q9_run(p: Profile) -> (Verdict, Vec<(Gpa, u64, u64)>) {
    let v = verdict(&vreq(
        p,
        &[0x48, 0x89, 0x18],
        &[(Gpr::Rax, G), (Gpr::Rbx, OLD | XD)],
        OLD,
    ));
    assert_eq!(v.entry, OLD | XD);
    // The #VE-off path (introcore's own filter).
    let mut f = fx_with(WorldConfig {
        ve: false,
        ..config(p.quirks())
    });
    let e1 = f.e(1);
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    f.set(1, OLD);
    f.mov_entry(0, 1, OLD | XD);
    run_to(&mut f.w, 0, CODE + 3, 5);
    assert_eq!(f.get(1), OLD | XD);
    (v, callbacks(&f.w))
}

#[test]
fn q9_xd_unmonitored_hvmi() {
    let (v, cbs) = q9_run(Profile::Hvmi);
    assert_eq!(v.outcome, Some(AgentOutcome::IgnoredIrrelevant));
    assert!(v.vmcalls.is_empty());
    assert!(cbs.is_empty());
}

#[test]
fn q9_xd_unmonitored_fixed() {
    let (v, cbs) = q9_run(Profile::Fixed);
    assert_eq!(v.outcome, Some(AgentOutcome::Raised));
    assert_eq!(v.vmcalls, [(RAISE_EPT, 0, 0)]);
    assert_eq!(cbs.len(), 1);
    assert_eq!((cbs[0].1, cbs[0].2), (OLD, OLD | XD));
}

/// Q10 set-up: DATA's PTE present, writable, A and D clear, in a write-protected convertible
/// table, so the CPU's A/D write is a page-walk #VE (qualification 0xAB, bit 8 clear).
fn q10_write(q: Quirks) -> (Fx, u64) {
    let mut f = fx(q);
    let pte = f.get(0) & !(A | D);
    f.set(0, pte);
    f.code(&[0x48, 0x89, 0x18]); // mov [rax], rbx: a write to DATA itself
    f.w.vcpus[0].set_reg(Gpr::Rax, DATA);
    f.w.vcpus[0].set_reg(Gpr::Rbx, 0x1234);
    (f, pte)
}

/// Q10 read set-up: DATA's PDE has A clear in a write-protected convertible PD page; its PTE is
/// accessed, writable and clean; the guest reads DATA.
fn q10_read(q: Quirks) -> (Fx, Gpa) {
    let mut f = fx(q);
    let d = data_entries(&f.w);
    let pd = d[2].page_base();
    or_present_entries(&mut f.w, pd, A | D);
    let pde = mem(&f.w, d[2]);
    f.w.machine.mem.write_u64(d[2], pde & !A);
    let pte = f.get(0);
    f.set(0, (pte | A) & !D);
    f.w.place_monitor(pd.wrapping_add(300 * 8));
    f.w.commit_hooks();
    f.code(&[0x48, 0x8B, 0x18]); // mov rbx, [rax]
    f.w.vcpus[0].set_reg(Gpr::Rax, DATA);
    (f, d[2])
}

#[test]
fn q10_walk_ad_order_hvmi() {
    let (mut f, pte) = q10_write(Quirks::hvmi());
    one_ve(&mut f.w, 0);
    assert_eq!(f.get(0), pte | A, "first #VE: A only");
    one_ve(&mut f.w, 0);
    assert_eq!(f.get(0), pte | A | D, "second #VE: D");
    run_to(&mut f.w, 0, CODE + 3, 5);
    let e0 = f.e(0).0;
    assert_eq!(ves(&f.w), [(QUAL_WALK, DATA, e0), (QUAL_WALK, DATA, e0)]);
    assert_eq!(mem(&f.w, phys(&f.w, DATA)), 0x1234);
    // D is set by a read walk too.
    let (mut f, pde) = q10_read(Quirks::hvmi());
    run_to(&mut f.w, 0, CODE + 3, 1000);
    assert_eq!(ves(&f.w), [(QUAL_WALK, DATA, pde.0)]);
    assert_eq!(mem(&f.w, pde) & A, A);
    assert_eq!(f.get(0) & D, D, "D set on a read");
}

#[test]
fn q10_walk_ad_order_fixed() {
    let (mut f, pte) = q10_write(Quirks::fixed());
    one_ve(&mut f.w, 0);
    assert_eq!(f.get(0), pte | A | D, "one #VE: A and D for a write");
    run_to(&mut f.w, 0, CODE + 3, 5);
    assert_eq!(ves(&f.w), [(QUAL_WALK, DATA, f.e(0).0)]);
    assert_eq!(mem(&f.w, phys(&f.w, DATA)), 0x1234);
    let (mut f, pde) = q10_read(Quirks::fixed());
    run_to(&mut f.w, 0, CODE + 3, 1000);
    assert_eq!(ves(&f.w), [(QUAL_WALK, DATA, pde.0)]);
    assert_eq!(mem(&f.w, pde) & A, A);
    assert_eq!(f.get(0) & D, 0, "no D on a read");
}

/// Q15: a monitored entry at GPA 0 (frame 0 used as a table and mapped at X).
fn q15_run(q: Quirks) -> World {
    const X: u64 = 0xFFFF_F800_0070_0000;
    let mut f = fx(q);
    f.w.guest
        .map_at(&mut f.w.machine, X, Gpa(0), PteFlags::WRITABLE)
        .unwrap();
    f.w.place_monitor(Gpa(0));
    f.w.commit_hooks();
    f.code(&[0x48, 0x89, 0x18]);
    f.w.vcpus[0].set_reg(Gpr::Rax, X);
    f.w.vcpus[0].set_reg(Gpr::Rbx, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(mem(&f.w, Gpa(0)), OLD);
    f.w
}

#[test]
fn q15_empty_slot_zero_hvmi() {
    let w = q15_run(Quirks::hvmi());
    assert_eq!(outcomes(&w), [(AgentOutcome::IgnoredCache, None)]);
    assert!(vmcalls(&w).is_empty());
    assert!(
        callbacks(&w).is_empty(),
        "the monitored entry's change is missed"
    );
}

#[test]
fn q15_empty_slot_zero_fixed() {
    let w = q15_run(Quirks::fixed());
    assert_eq!(outcomes(&w), [(AgentOutcome::Raised, None)]);
    assert_eq!(callbacks(&w), [(Gpa(0), 0, OLD)]);
}

/// Q16: a monitor placed while unload is pending: `hvmi` does not evict its cached entry, so
/// the relevant write is ignored; `fixed` evicts and the write is raised.
fn q16_run(q: Quirks) -> (bool, World) {
    let mut f = fx(q);
    let e1 = f.e(1);
    f.w.update_cache(e1, false);
    f.w.intro.pending_unload = true;
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    let cached = f.w.cache_contains(e1);
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    (cached, f.w)
}

#[test]
fn q16_no_evict_on_unload_hvmi() {
    let (cached, w) = q16_run(Quirks::hvmi());
    assert!(cached);
    assert_eq!(outcomes(&w), [(AgentOutcome::IgnoredCache, None)]);
    assert!(callbacks(&w).is_empty());
}

#[test]
fn q16_no_evict_on_unload_fixed() {
    let (cached, w) = q16_run(Quirks::fixed());
    assert!(!cached);
    assert_eq!(outcomes(&w), [(AgentOutcome::Raised, None)]);
    assert_eq!(callbacks(&w).len(), 1);
}

/// Q17: eight entries of one bucket, one removed, one added; then a redeploy and one more add.
fn q17_entry(k: u64) -> Gpa {
    Gpa(0x0123_4568 + (k << 18))
}

fn q17_fill(q: Quirks) -> World {
    let mut w = World::new(config(q)).unwrap();
    for k in 0..8 {
        w.update_cache(q17_entry(k), false);
    }
    w.update_cache(q17_entry(3), true);
    w.update_cache(q17_entry(8), false);
    w
}

#[test]
fn q17_fill_counter_hvmi() {
    let mut w = q17_fill(Quirks::hvmi());
    assert_eq!(
        w.intro.cache.stats.random_replacements, 1,
        "the hole is not refilled: the counter is at 8"
    );
    w.deploy_agent().unwrap();
    assert_eq!(
        mem(&w, cache_slot(0x34, 0x2D, 0)),
        0,
        "the new cache is empty"
    );
    w.update_cache(q17_entry(9), false);
    assert_eq!(
        w.intro.cache.stats.random_replacements, 2,
        "the counter survived the redeploy"
    );
    assert!(w.cache_contains(q17_entry(9)));
}

#[test]
fn q17_fill_counter_fixed() {
    let mut w = q17_fill(Quirks::fixed());
    assert_eq!(w.intro.cache.stats.random_replacements, 0);
    assert_eq!(mem(&w, cache_slot(0x34, 0x2D, 3)), q17_entry(8).0);
    for k in (0..9).filter(|k| *k != 3) {
        assert!(w.cache_contains(q17_entry(k)), "{k}");
    }
    w.deploy_agent().unwrap();
    w.update_cache(q17_entry(9), false);
    assert_eq!(w.intro.cache.stats.random_replacements, 0);
    assert_eq!(mem(&w, cache_slot(0x34, 0x2D, 0)), q17_entry(9).0);
}

/// Q18: one #VE of each kind; the page counters against VE-SEMANTICS section 3.
fn q18_run(q: Quirks) -> World {
    let mut f = fx(q);
    let e = map_user_page(&mut f.w);
    for g in e {
        let v = mem(&f.w, g);
        f.w.machine.mem.write_u64(g, v | A | D);
    }
    // 1. irrelevant; 2. raised (caches entries 1..8); 3. cached.
    f.set(1, OLD);
    f.mov_entry(0, 1, OLD | 0x200);
    one_ve(&mut f.w, 0);
    f.mov_entry(0, 1, OLD ^ RW);
    one_ve(&mut f.w, 0);
    f.mov_entry(0, 2, OLD);
    one_ve(&mut f.w, 0);
    // 4. refused (4-byte write): a break in hvmi, emulated by introcore in fixed.
    f.code(&[0x89, 0x18]);
    f.w.vcpus[0].set_reg(Gpr::Rax, egla(3));
    f.w.vcpus[0].set_reg(Gpr::Rbx, 1);
    one_ve(&mut f.w, 0);
    f.w.vcpus[0].rip = CODE + 2;
    // 5. page walk that sets A; 6. page walk that raises (user page, everything set).
    let pte = f.get(0) & !(A | D);
    f.set(0, pte);
    let e0 = f.e(0);
    f.code(&[0x48, 0x8B, 0x18]);
    inject(&mut f.w, 0, QUAL_WALK, DATA, e0);
    inject(&mut f.w, 0, QUAL_WALK, USER_PAGE, e[3]);
    // 7. an unknown exit reason.
    f.mov_entry(0, 4, OLD);
    deliver(&mut f.w, 0);
    to_step(&mut f.w, 0, rip::H_ENTRY);
    let page = page_of(&f.w, 0);
    f.w.machine.mem.write_u32(page, 0x37);
    f.w.run_agent(0, 1000).unwrap();
    f.w
}

const Q18_FIELDS: [u64; 6] = [
    veinfo::VE_TOTAL,
    veinfo::VE_PAGE_WALK,
    veinfo::VE_MM,
    veinfo::VE_IGNORED_IRRELEVANT,
    veinfo::VE_IGNORED_CACHE,
    veinfo::VE_IGNORED_TOTAL,
];

#[test]
fn q18_stats_hvmi() {
    let w = q18_run(Quirks::hvmi());
    // VeIgnoredTotal counts every non-raised #VE: irrelevant, cached, walk, refusal, break.
    assert_eq!(Q18_FIELDS.map(|o| pg(&w, 0, o)), [7, 2, 3, 1, 1, 5]);
    let c = &w.counters;
    assert_ne!(
        pg(&w, 0, veinfo::VE_IGNORED_TOTAL),
        c.ignored_irrelevant + c.ignored_cache + c.page_walk_set,
        "the section 3 identity fails"
    );
}

#[test]
fn q18_stats_fixed() {
    let w = q18_run(Quirks::fixed());
    assert_eq!(Q18_FIELDS.map(|o| pg(&w, 0, o)), [7, 2, 3, 1, 1, 3]);
    let c = &w.counters;
    assert_eq!(c.ve_total, 7);
    assert_eq!(c.ve_total, c.ve_page_walk + c.ve_pt_write + c.ve_unknown);
    assert_eq!(
        c.ve_pt_write,
        c.ignored_irrelevant + c.ignored_cache + c.raised + c.emulated_by_introcore + c.rejected
    );
    assert_eq!(pg(&w, 0, veinfo::VE_TOTAL), c.ve_total);
    assert_eq!(pg(&w, 0, veinfo::VE_PAGE_WALK), c.ve_page_walk);
    assert_eq!(
        pg(&w, 0, veinfo::VE_MM),
        c.ve_pt_write - c.emulated_by_introcore - c.rejected
    );
    assert_eq!(
        pg(&w, 0, veinfo::VE_IGNORED_IRRELEVANT),
        c.ignored_irrelevant
    );
    assert_eq!(pg(&w, 0, veinfo::VE_IGNORED_CACHE), c.ignored_cache);
    assert_eq!(
        pg(&w, 0, veinfo::VE_IGNORED_TOTAL),
        c.ignored_irrelevant + c.ignored_cache + c.page_walk_set
    );
}

/// Q19: VCPU 1's 0x50 descriptor is page-granular with limit 4: LSL = 0x4FFF, so the agent's
/// index is (0x3FF << 6) | 1 = 0xFFC1; without the OR 0xFFF introcore computes 0x4000 -> 1.
fn q19_config(q: Quirks) -> WorldConfig {
    let mut c = config(q);
    c.guest.vcpus = 2;
    c.guest.seg50 = Some(vec![
        seg50_for_cpu(0),
        SegmentLimit {
            limit: 4,
            granularity: true,
        },
    ]);
    c
}

#[test]
fn q19_cpumap_g_hvmi() {
    let mut f = fx_with(q19_config(Quirks::hvmi()));
    assert_eq!(f.w.intro.slots[1], Some(1), "introcore's key");
    // The agent reads slot 0xFFC1 (0: VCPU 0's page) and finds no #VE there.
    f.mov_entry(1, 1, OLD);
    one_ve(&mut f.w, 1);
    assert_eq!(vmcalls(&f.w), [(BREAK, BREAK_UNKNOWN_EXIT, 0)]);
    assert_eq!(pg(&f.w, 0, veinfo::VE_TOTAL), 1, "VCPU 0's page was used");
    assert_eq!(pg(&f.w, 1, veinfo::VE_TOTAL), 0);
    let page1 = page_of(&f.w, 1);
    assert_eq!(f.w.machine.mem.read_u32(page1.wrapping_add(4)), 0xFFFF_FFFF);
}

#[test]
fn q19_cpumap_g_fixed() {
    // Q19 alone off (Q20 still unbounded): introcore uses the LSL value, 0xFFC1, as the agent.
    let q = Quirks {
        q19_cpumap_g: false,
        ..Quirks::hvmi()
    };
    let mut f = fx_with(q19_config(q));
    assert_eq!(f.w.intro.slots[1], Some(0xFFC1));
    f.mov_entry(1, 1, OLD);
    one_ve(&mut f.w, 1);
    assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 0, 0)]);
    assert_eq!(pg(&f.w, 1, veinfo::VE_TOTAL), 1);
    assert_eq!(pg(&f.w, 0, veinfo::VE_TOTAL), 0);
    // The whole `fixed` profile: index 0xFFC1 is >= 64 (Q20), so no slot and an alert.
    let mut f = fx_with(q19_config(Quirks::fixed()));
    assert_eq!(f.w.intro.slots[1], None);
    assert!(f.w.events.iter().any(|e| matches!(
        e,
        Event::Alert { cpu: 1, detail } if detail.contains("0xffc1")
    )));
    f.mov_entry(1, 1, OLD);
    run_to(&mut f.w, 1, CODE + 3, 5);
    assert_eq!(f.w.counters.ve_total, 0);
    assert_eq!(f.get(1), OLD);
}

/// Q20 `hvmi`: no bound on the index; unused slots hold 0, i.e. VCPU 0's page.
#[test]
fn q20_cpu_index_hvmi() {
    let mut c = config(Quirks::hvmi());
    c.guest.vcpus = 2;
    c.guest.seg50 = Some(vec![seg50_for_cpu(0), seg50_for_cpu(100)]);
    let mut f = fx_with(c);
    let map = layout::AGENT_GPA.wrapping_add(layout::AGENT_CPUMAP);
    assert_eq!(f.w.machine.mem.read_u32(map.wrapping_add(4 * 100)), 1);
    for s in [1u64, 5, 63] {
        assert_eq!(f.w.machine.mem.read_u32(map.wrapping_add(4 * s)), 0);
    }
    f.mov_entry(1, 1, OLD);
    one_ve(&mut f.w, 1);
    assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 0, 0)], "slot 100 works");
    assert_eq!(pg(&f.w, 1, veinfo::VE_TOTAL), 1);
    // The descriptor now maps to unused slot 5: the agent takes VCPU 0's page.
    f.w.vcpus[1].seg50 = seg50_for_cpu(5);
    f.mov_entry(1, 2, OLD);
    one_ve(&mut f.w, 1);
    assert_eq!(vmcalls(&f.w)[1], (BREAK, BREAK_UNKNOWN_EXIT, 0));
    assert_eq!(pg(&f.w, 0, veinfo::VE_TOTAL), 1);
    let page1 = page_of(&f.w, 1);
    assert_eq!(f.w.machine.mem.read_u32(page1.wrapping_add(4)), 0xFFFF_FFFF);
}

/// Q20 `hvmi`: introcore writes VCPU 1's number at VECPUMAP + 4 × 2000, i.e. at offset 0xF40
/// of VCPU 0's information page; deploy step 12 initialises only ProtectedStack, Self and
/// Index (B87), so the value stays and the agent on VCPU 1 finds its own page through it.
#[test]
fn q20_cpu_index_hvmi_out_of_map_slot_survives_deploy() {
    let mut c = config(Quirks::hvmi());
    c.guest.vcpus = 2;
    c.guest.seg50 = Some(vec![seg50_for_cpu(0), seg50_for_cpu(2000)]);
    let mut f = fx_with(c);
    let slot = layout::AGENT_GPA.wrapping_add(layout::AGENT_CPUMAP + 4 * 2000);
    assert_eq!(
        slot,
        layout::AGENT_GPA.wrapping_add(layout::AGENT_VEINFO + 0xF40)
    );
    assert_eq!(f.w.machine.mem.read_u32(slot), 1);
    f.mov_entry(1, 1, OLD);
    one_ve(&mut f.w, 1);
    assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 0, 0)]);
    assert_eq!(pg(&f.w, 1, veinfo::VE_TOTAL), 1);
}

/// Q20 `fixed`: unused slots hold 0xFFFFFFFF; an index >= 64 or a collision gets no slot, no
/// page and an alert; in the agent such a slot means return at once.
#[test]
fn q20_cpu_index_fixed() {
    // Index 100 and a collision with VCPU 0.
    for other in [100u64, 0] {
        let mut c = config(Quirks::fixed());
        c.guest.vcpus = 2;
        c.guest.seg50 = Some(vec![seg50_for_cpu(0), seg50_for_cpu(other)]);
        let mut f = fx_with(c);
        assert_eq!(f.w.intro.slots[1], None, "index {other}");
        assert_eq!(f.w.vcpus[1].ve_info, None);
        assert!(f
            .w
            .events
            .iter()
            .any(|e| matches!(e, Event::Alert { cpu: 1, .. })));
        let map = layout::AGENT_GPA.wrapping_add(layout::AGENT_CPUMAP);
        for s in 1..64u64 {
            assert_eq!(f.w.machine.mem.read_u32(map.wrapping_add(4 * s)), u32::MAX);
        }
        f.mov_entry(1, 1, OLD);
        run_to(&mut f.w, 1, CODE + 3, 5);
        assert_eq!(f.w.counters.ve_total, 0, "the #VE-off path");
        assert_eq!(f.get(1), OLD);
    }
    // A VCPU with a page whose descriptor later maps to an unused slot or past the map.
    for idx in [5u64, 100] {
        let mut c = config(Quirks::fixed());
        c.guest.vcpus = 2;
        let mut f = fx_with(c);
        f.w.vcpus[1].seg50 = seg50_for_cpu(idx);
        f.mov_entry(1, 1, OLD);
        one_ve(&mut f.w, 1);
        assert!(vmcalls(&f.w).is_empty());
        assert_eq!(f.w.vcpus[1].rip, CODE);
        assert_eq!(pg(&f.w, 0, veinfo::VE_TOTAL), 0);
        assert_eq!(pg(&f.w, 1, veinfo::VE_TOTAL), 0);
        // The semaphore stays set, so the retry is an ordinary exit that introcore handles.
        run_to(&mut f.w, 1, CODE + 3, 5);
        assert_eq!(f.get(1), OLD);
        assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    }
}

/// Section 3 with two VCPUs in flight: the #VE VCPU 1's agent cannot classify (no slot, Q20)
/// moves from VCPU 1's delivered kind (a PT write) to `unknown`, even though VCPU 0 took a
/// page-walk #VE after it and has not run its agent yet.
#[test]
fn unclassified_ve_is_recounted_from_its_own_vcpus_kind() {
    let mut c = config(Quirks::fixed());
    c.guest.vcpus = 2;
    let mut f = fx_with(c);
    f.w.vcpus[1].seg50 = seg50_for_cpu(100);
    f.mov_entry(1, 1, OLD);
    deliver(&mut f.w, 1);
    let e0 = f.e(0);
    raise_only(&mut f.w, 0, QUAL_WALK, DATA, e0);
    f.w.run_agent(1, 10_000).unwrap();
    let c = &f.w.counters;
    assert_eq!(
        (c.ve_total, c.ve_page_walk, c.ve_pt_write, c.ve_unknown),
        (2, 1, 0, 1)
    );
    f.w.run_agent(0, 10_000).unwrap();
    assert_eq!(f.w.counters.page_walk_set, 1);
}

/// Q24 set-up: the untrusted view is index 2. The second raise's dispatch ends with the
/// commit of queued hook removals (B102 step 6) that un-protect the table: an EPT change that
/// must land in the untrusted view.
fn q24_run(q: Quirks) -> World {
    let mut c = config(q);
    c.guest.untrusted_view = ViewId(2);
    c.guest.protected_view = ViewId(1);
    let mut f = fx_with(c);
    let e1 = f.e(1);
    f.w.place_monitor(e1);
    f.w.commit_hooks();
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    for e in [e1, f.pt.wrapping_add(256 * 8)] {
        for id in f.w.intro.ptm.monitors(e) {
            f.w.remove_monitor(id);
        }
    }
    f.mov_entry(0, 2, OLD);
    one_ve(&mut f.w, 0);
    f.w
}

#[test]
fn q24_eptp_zero_fixed() {
    let w = q24_run(Quirks::fixed());
    assert_eq!(
        callbacks(&w),
        [(
            Gpa(w
                .guest
                .entry_gpa(&w.machine, DATA, 1)
                .unwrap()
                .page_base()
                .0
                + 8),
            0,
            OLD
        )]
    );
    assert_eq!(vmcalls(&w), [(RAISE_EPT, 0, 0), (RAISE_EPT, 0, 0)]);
    assert!(w.machine.ept.view(ViewId(0)).is_none());
    assert_eq!(w.vcpus[0].eptp_index, ViewId(2));
    // The dispatch's commit un-protected the table in view 2; view 1 stays RW-.
    let pt = w.guest.entry_gpa(&w.machine, DATA, 1).unwrap().page_base();
    let f = w
        .machine
        .ept
        .view(ViewId(2))
        .unwrap()
        .entry(pt.gfn())
        .flags();
    assert!(f.contains(RWX | EptFlags::SUPPRESS_VE), "{f:?}");
    assert_eq!(
        protected_flags(&w, pt) & (RWX | EptFlags::SUPPRESS_VE),
        EptFlags::READ | EptFlags::WRITE | EptFlags::SUPPRESS_VE
    );
}

/// Q31: `mov [eax+0x10], rbx` with EAX = 0xFFFFFFF8: hardware wraps the 0x67 sum mod 2^32 to
/// 0x8; HVMI's B38 sum is 0x1_0000_0008.
fn q31_run(p: Profile) -> Verdict {
    let v = verdict(&vreq(
        p,
        &[0x67, 0x48, 0x89, 0x58, 0x10],
        &[(Gpr::Rax, 0xFFFF_FFF8), (Gpr::Rbx, OLD)],
        0,
    ));
    assert_eq!(v.gla, 0x8);
    v
}

#[test]
fn q31_addr32_hvmi() {
    let v = q31_run(Profile::Hvmi);
    assert_eq!(v.outcome, Some(AgentOutcome::Rejected));
    assert_eq!(v.reason, Some(RejectReason::GlaMismatch));
    assert_eq!(v.entry, 0);
}

#[test]
fn q31_addr32_fixed() {
    let v = q31_run(Profile::Fixed);
    assert_eq!(v.outcome, Some(AgentOutcome::Raised));
    assert_eq!((v.entry, v.rip), (OLD, layout::VERDICT_DEFAULT_RIP + 5));
}
