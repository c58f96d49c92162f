//! B7–B25: the entry and exit protocol of the #VE stub.

use crate::kit::{events::*, spec::*, ve::*, worlds::*};
use crate::{fx, fx_with};
use vesim::agent::rip;
use vesim::layout::{self, veinfo};
use vesim::quirks::Quirks;
use vesim_model::vcpu::{Gpr, SegmentLimit};
use vesim_model::{ExitReason, VcpuId, ViewId};

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
    f.w.step(VcpuId(0)).unwrap();
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
    f.w.step(VcpuId(0)).unwrap();
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
    assert_eq!(f.w.ve_page(VcpuId(1)), Some(page1));
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
    let page1 = f.w.ve_page(VcpuId(1)).unwrap();
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
    w.step(VcpuId(0)).unwrap();
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
    w.run_agent(VcpuId(0), 1000).unwrap();
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
    f.w.step(VcpuId(0)).unwrap();
    assert_eq!(f.w.machine.mem.read_u32(page.wrapping_add(4)), 0);
    assert_eq!(f.w.vcpus[0].eptp_index, ViewId(2));
    f.w.run_agent(VcpuId(0), 100).unwrap();
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
        f.w.run_agent(VcpuId(0), 1000).unwrap();
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
