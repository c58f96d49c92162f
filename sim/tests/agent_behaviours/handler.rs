//! B26–B31: the handler's decision tree and statistics.

use crate::fx;
use crate::kit::{events::*, spec::*, ve::*, verdict::*, worlds::*};
use vesim::agent::{rip, AgentOutcome, RejectReason};
use vesim::layout::{self, veinfo};
use vesim::quirks::{Profile, Quirks};
use vesim_model::vcpu::Gpr;
use vesim_model::VcpuId;

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
        f.w.run_agent(VcpuId(0), 1000).unwrap();
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
    f.w.run_agent(VcpuId(0), 1000).unwrap();
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
