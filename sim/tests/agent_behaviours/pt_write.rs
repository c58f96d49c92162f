//! B34–B57: VeHandlePtWrite, from decoding to the final store.

use crate::fx;
use crate::kit::{events::*, spec::*, ve::*, verdict::*, worlds::*};
use std::collections::BTreeMap;
use vesim::agent::{rip, AgentOutcome, RejectReason};
use vesim::layout::{self, veinfo};
use vesim::quirks::{Profile, Quirks};
use vesim::world::World;
use vesim_model::paging::{self_map_entry_address, PteFlags};
use vesim_model::vcpu::Gpr;
use vesim_model::{Gla, Gpa, VcpuId};

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
    while vesim::layout::in_agent(f.w.vcpus[0].rip) || f.w.vcpus[0].rip == layout::OS_VE_HANDLER_GVA
    {
        assert_eq!(locks(&f.w), [0; 8], "no lock at any step");
        f.w.step(VcpuId(0)).unwrap();
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

/// Write-protects and makes convertible the table page holding `entry`: A and D are set on its
/// present entries first (so that walks through it need no A/D write), then a monitor goes on
/// its entry 511.
fn protect_table(w: &mut World, entry: Gpa) {
    let table = entry.page_base();
    or_present_entries(w, table, A | D);
    w.engine().place_monitor(table.wrapping_add(511 * 8));
    w.engine().commit_hooks();
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
        f.w.run_agent(VcpuId(0), 1000).unwrap();
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
    while vesim::layout::in_agent(f.w.vcpus[0].rip) || f.w.vcpus[0].rip == layout::OS_VE_HANDLER_GVA
    {
        let off = f.w.vcpus[0].rip.wrapping_sub(layout::AGENT_GVA);
        seen.insert(off, lock_held(&f.w, 0x1F0));
        f.w.step(VcpuId(0)).unwrap();
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
        f.w.step(VcpuId(0)).unwrap();
        assert_eq!(f.w.vcpus[0].rip, agent_at(rip::PT_LOCK));
    }
    set_lock(&mut f.w, 0x1F0, false);
    f.w.step(VcpuId(0)).unwrap();
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
    f.w.engine().update_cache(Gpa(egla(1)), false);
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(vmcalls(&f.w), [(RAISE_EPT, 0, 0)]);
    // Keyed by the GPA: found, ignored.
    let mut f = fx(Quirks::fixed());
    let e1 = f.e(1);
    f.w.engine().update_cache(e1, false);
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
    f.w.step(VcpuId(0)).unwrap();
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
    f.w.step(VcpuId(0)).unwrap();
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
