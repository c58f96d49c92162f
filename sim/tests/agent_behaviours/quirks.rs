//! The quirks Q1–Q31, each in both settings (VE-SEMANTICS section 2), and a section 3 recount.

use crate::kit::cache::{bucket_entry as q17_entry, cache_slot};
use crate::kit::{ept::*, events::*, spec::*, ve::*, verdict::*, worlds::*};
use crate::{fx, fx_with};
use vesim::agent::{rip, AgentOutcome, RejectReason};
use vesim::guest::seg50_for_cpu;
use vesim::layout::{self, veinfo};
use vesim::quirks::{Profile, Quirks};
use vesim::verdict::Verdict;
use vesim::world::{Event, World, WorldConfig};
use vesim_model::ept::EptFlags;
use vesim_model::paging::PteFlags;
use vesim_model::vcpu::{Gpr, SegmentLimit};
use vesim_model::VcpuId;
use vesim_model::{Gpa, ViewId};

/// Q1 `hvmi`: an unsupported write breaks (BREAK, EMULATION_FAILED) and returns with RIP
/// unchanged, so the same write #VEs again, forever.
#[test]
fn q1_break_loop_hvmi() {
    let mut f = fx(Quirks::hvmi());
    let e1 = f.e(1);
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
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
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
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
    f.w.run_agent(VcpuId(0), 1000).unwrap();
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
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
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
    assert!(!f.w.intro.cache_contains(&f.w.machine, &f.w.guest, f.e(2)));
}

/// Q1 `fixed` with a misaligned 8-byte write that spans entries 1 and 2: it changes RW of the
/// monitored entry 2, so that entry's callback must run (I1, B114: every hook whose range the
/// access meets).
#[test]
fn q1_break_loop_fixed_misaligned_write_reports_the_second_entry() {
    let mut f = fx(Quirks::fixed());
    let e2 = f.e(2);
    f.w.engine().place_monitor(e2);
    f.w.engine().commit_hooks();
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
    f.w.run_agent(VcpuId(0), 100).unwrap();
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
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
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
    f.w.engine().place_monitor(pd.wrapping_add(300 * 8));
    f.w.engine().commit_hooks();
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
    f.w.engine().place_monitor(Gpa(0));
    f.w.engine().commit_hooks();
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
    f.w.engine().update_cache(e1, false);
    f.w.intro.pending_unload = true;
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
    let cached = f.w.intro.cache_contains(&f.w.machine, &f.w.guest, e1);
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

/// Q17: eight entries of one bucket (`q17_entry`), one removed, one added; then a redeploy and
/// one more add.
fn q17_fill(q: Quirks) -> World {
    let mut w = World::new(config(q)).unwrap();
    for k in 0..8 {
        w.engine().update_cache(q17_entry(k), false);
    }
    w.engine().update_cache(q17_entry(3), true);
    w.engine().update_cache(q17_entry(8), false);
    w
}

#[test]
fn q17_fill_counter_hvmi() {
    let mut w = q17_fill(Quirks::hvmi());
    assert_eq!(
        w.intro.cache.stats.random_replacements, 1,
        "the hole is not refilled: the counter is at 8"
    );
    w.engine().deploy_agent().unwrap();
    assert_eq!(
        mem(&w, cache_slot(0x34, 0x2D, 0)),
        0,
        "the new cache is empty"
    );
    w.engine().update_cache(q17_entry(9), false);
    assert_eq!(
        w.intro.cache.stats.random_replacements, 2,
        "the counter survived the redeploy"
    );
    assert!(w.intro.cache_contains(&w.machine, &w.guest, q17_entry(9)));
}

#[test]
fn q17_fill_counter_fixed() {
    let mut w = q17_fill(Quirks::fixed());
    assert_eq!(w.intro.cache.stats.random_replacements, 0);
    assert_eq!(mem(&w, cache_slot(0x34, 0x2D, 3)), q17_entry(8).0);
    for k in (0..9).filter(|k| *k != 3) {
        assert!(
            w.intro.cache_contains(&w.machine, &w.guest, q17_entry(k)),
            "{k}"
        );
    }
    w.engine().deploy_agent().unwrap();
    w.engine().update_cache(q17_entry(9), false);
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
    f.w.run_agent(VcpuId(0), 1000).unwrap();
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
        Event::Alert { cpu: VcpuId(1), detail } if detail.contains("0xffc1")
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
            .any(|e| matches!(e, Event::Alert { cpu: VcpuId(1), .. })));
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
    f.w.run_agent(VcpuId(1), 10_000).unwrap();
    let c = &f.w.counters;
    assert_eq!(
        (c.ve_total, c.ve_page_walk, c.ve_pt_write, c.ve_unknown),
        (2, 1, 0, 1)
    );
    f.w.run_agent(VcpuId(0), 10_000).unwrap();
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
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    for e in [e1, f.pt.wrapping_add(256 * 8)] {
        for id in f.w.intro.ptm.monitors(e) {
            f.w.engine().remove_monitor(id);
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
