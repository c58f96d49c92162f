//! B116–B122: agent page swaps, blocked accesses, the protected view and the statistics.

use crate::kit::{agent::*, asm::*, ept::*, events::*, spec::*, ve::*, worlds::*};
use crate::{fx, fx_with};
use vesim::agent::AgentOutcome;
use vesim::introcore::hooks::HookCounts;
use vesim::layout::{self, veinfo};
use vesim::quirks::Quirks;
use vesim::world::World;
use vesim_model::ept::EptFlags;
use vesim_model::vcpu::Gpr;
use vesim_model::{Gpa, VcpuId};

/// The B116 remap of the agent's .text page, in the protected view: the page is copied, the
/// new frame gets R-X and the old one RW-; the agent keeps running from the new frame.
fn b116_code_page_remap(q: Quirks) -> (Fx, Gpa, Gpa) {
    let mut f = fx(q);
    let from = agent_gpa(layout::AGENT_CODE);
    let mut image = [0u8; 4096];
    f.w.machine.mem.read(from, &mut image);
    // Something distinctive in the page, so the copy is visible.
    image[0xF00..0xF08].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    f.w.machine.mem.write(from, &image);
    assert_eq!(protected_flags(&f.w, FREE_FRAME) & RWX, RW_);
    let id = agent_hook_of(&f.w, agent_at(layout::AGENT_CODE));
    let (old, new) = remap_agent_page(&mut f, 0, layout::AGENT_CODE, FREE_FRAME);
    assert_eq!(swaps_of(&f.w, id), [(old, new)]);
    assert_eq!(pt_outcomes(&f.w), [AgentOutcome::Raised]);
    let mut copy = [0u8; 4096];
    f.w.machine.mem.read(FREE_FRAME, &mut copy);
    assert!(copy == image, "the page was copied");
    assert_eq!(protected_flags(&f.w, FREE_FRAME) & RWX, R_X);
    assert_eq!(protected_flags(&f.w, from) & RWX, RW_);
    assert_eq!(
        f.w.intro.hooked_translation(&f.w.machine, id),
        Some(FREE_FRAME)
    );
    assert_agent_still_works(&mut f, 0);
    (f, from, FREE_FRAME)
}

/// B116 (steps 3–5): the protected-view half of the remap.
#[test]
fn b116_agent_page_remap_copies_and_moves_protected_rights() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        b116_code_page_remap(q);
    }
}

/// B116 in full: also the untrusted-view protection moves with the page (step 6): the new frame
/// carries the .text hooks (read, write, execute: no access), the old frame none (RWX).
#[test]
fn b116_agent_page_remap_copies_and_moves_rights() {
    let (f, from, to) = b116_code_page_remap(Quirks::fixed());
    let c = f.w.intro.hook_counts(to);
    assert_eq!((c.read, c.write, c.execute), (1, 1, 1));
    assert_eq!(untrusted_flags(&f.w, to) & RWX, EptFlags::empty());
    assert_eq!(f.w.intro.hook_counts(from), HookCounts::default());
    assert_eq!(untrusted_flags(&f.w, from) & RWX, RWX);
}

/// B116 step 8: a moved information page is registered again: VCPU 1's page moved by VCPU 0,
/// and VCPU 0's own page moved while VCPU 0 is handling the very #VE that moves it.
#[test]
fn b116_moved_information_page_is_registered_again() {
    let mut f = fx_with(config_n(Quirks::fixed(), 2));
    let page1 = agent_gpa(layout::AGENT_VEINFO + 0x1000);
    assert_eq!(f.w.ve_page(VcpuId(1)), Some(page1));
    remap_agent_page(&mut f, 0, layout::AGENT_VEINFO + 0x1000, FREE_FRAME);
    assert_eq!(f.w.ve_page(VcpuId(1)), Some(FREE_FRAME));
    assert_eq!(
        mem(&f.w, FREE_FRAME.wrapping_add(veinfo::SELF)),
        agent_at(layout::AGENT_VEINFO + 0x1000)
    );
    assert_eq!(mem(&f.w, FREE_FRAME.wrapping_add(veinfo::INDEX)), 1);
    assert_agent_still_works(&mut f, 1);
    assert_eq!(mem(&f.w, FREE_FRAME.wrapping_add(veinfo::VE_TOTAL)), 1);
    assert_eq!(mem(&f.w, page1.wrapping_add(veinfo::VE_TOTAL)), 0);
    assert_eq!(f.w.machine.mem.read_u32(FREE_FRAME.wrapping_add(4)), 0);
    // VCPU 0 moves its own page.
    let page0 = agent_gpa(layout::AGENT_VEINFO);
    remap_agent_page(&mut f, 0, layout::AGENT_VEINFO, FREE_FRAME2);
    assert_eq!(f.w.ve_page(VcpuId(0)), Some(FREE_FRAME2));
    // Its two #VEs so far (both remaps) were counted before the copy.
    assert_eq!(mem(&f.w, FREE_FRAME2.wrapping_add(veinfo::VE_TOTAL)), 2);
    assert_eq!(f.w.machine.mem.read_u32(FREE_FRAME2.wrapping_add(4)), 0);
    assert_agent_still_works(&mut f, 0);
    assert_eq!(mem(&f.w, FREE_FRAME2.wrapping_add(veinfo::VE_TOTAL)), 3);
    assert_eq!(mem(&f.w, page0.wrapping_add(veinfo::VE_TOTAL)), 2);
}

/// B116 step 7, B72 and B79: after a cache page is remapped, introcore reaches the line through
/// its GVA again (`gVeCache + line * 4K`), so its evictions and adds land in the new frame,
/// which is where the agent looks. Entry 2 is cached before the remap (the copy carries it);
/// a monitor placed afterwards must evict it there (B76, I7), so the next relevant write is
/// raised; entry 40 (another bucket of the same line) is cached at its first raise.
#[test]
fn b116_remapped_cache_page_is_found_again_through_its_gva() {
    let mut f = fx(Quirks::fixed());
    let (e2, e40) = (f.e(2), f.e(40));
    let line = (e2.0 >> 12) & 63;
    let slots = |w: &World, page: Gpa, e: Gpa| -> Vec<u64> {
        let bucket = (e.0 >> 3) & 63;
        (0..8)
            .map(|s| mem(w, page.wrapping_add(bucket * 64 + s * 8)))
            .collect()
    };
    f.write_entry(0, 2, OLD);
    let off = layout::AGENT_VECACHE + line * 0x1000;
    assert!(slots(&f.w, agent_gpa(off), e2).contains(&e2.0));
    remap_agent_page(&mut f, 0, off, FREE_FRAME);
    assert!(slots(&f.w, FREE_FRAME, e2).contains(&e2.0), "copied");
    f.w.engine().place_monitor(e2);
    f.w.engine().commit_hooks();
    assert!(!slots(&f.w, FREE_FRAME, e2).contains(&e2.0), "evicted");
    let (n, ncb) = (f.w.events.len(), f.w.intro.callbacks.len());
    f.write_entry(0, 2, OLD ^ RW);
    f.write_entry(0, 40, OLD);
    f.write_entry(0, 40, OLD ^ RW);
    assert_eq!(
        pt_outcomes_since(&f.w, n),
        [
            AgentOutcome::Raised,
            AgentOutcome::Raised,
            AgentOutcome::IgnoredCache
        ]
    );
    assert_eq!(callbacks(&f.w)[ncb..], [(e2, OLD, OLD ^ RW)]);
    assert!(slots(&f.w, FREE_FRAME, e40).contains(&e40.0));
}

/// B118: an untrusted-view read of an agent page is blocked silently: no alert.
#[test]
fn b118_untrusted_read_of_agent_blocked_without_alert() {
    let mut f = fx(Quirks::fixed());
    let target = agent_at(layout::AGENT_DATA + 8);
    let at = f.prep(0, &MOV_LOAD, &[(Gpr::Rax, target), (Gpr::Rbx, 0x77)]);
    let r = f.w.step(VcpuId(0));
    assert_blocked(&f.w, &r, at);
    assert_eq!(f.w.vcpus[0].reg(Gpr::Rbx), 0x77, "nothing was read");
    assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    assert!(alerts(&f.w).is_empty(), "a read is blocked silently");
}

/// B118: an untrusted-view write to an agent page is blocked and alerts.
#[test]
fn b118_untrusted_write_of_agent_alerts() {
    let mut f = fx(Quirks::fixed());
    let target = agent_at(layout::AGENT_DATA + 8);
    let before = agent_image(&f.w);
    let at = f.prep(0, &MOV_STORE, &[(Gpr::Rax, target), (Gpr::Rbx, 0)]);
    let r = f.w.step(VcpuId(0));
    assert_blocked(&f.w, &r, at);
    assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    assert_eq!(alerts(&f.w), [0]);
    assert!(agent_image(&f.w) == before, "agent memory unchanged");
}

/// B119: guest code switches to the protected view with VMFUNC (no CPL check, HW §6); its next
/// fetch violates EPT there (its code is RW-), which is an alert, and nothing executes.
#[test]
fn b119_protected_view_violation_alerts() {
    let mut f = fx(Quirks::fixed());
    let protected = f.w.intro.protected;
    let mut code = VMFUNC.to_vec();
    code.extend_from_slice(&MOV_STORE_RDX);
    let at = f.prep(
        0,
        &code,
        &[
            (Gpr::Rax, 0),
            (Gpr::Rcx, u64::from(protected.0)),
            (Gpr::Rdx, DATA),
            (Gpr::Rbx, 0x1234),
        ],
    );
    f.w.step(VcpuId(0)).unwrap();
    assert_eq!(f.w.vcpus[0].eptp_index, protected);
    assert_eq!(f.w.vcpus[0].rip, at + 3);
    let r = f.w.step(VcpuId(0));
    assert!(r.is_err() || f.w.vcpus[0].rip == at + 3, "blocked");
    assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    assert_eq!(alerts(&f.w), [0]);
    assert_eq!(mem(&f.w, f.data), 0, "the store did not execute");
}

/// B122: the statistics come from the information pages, per VCPU, and satisfy the identities
/// of the code (no breaks, no raised walks here): ignored = page walk + cache + irrelevant,
/// page walk + mm = total, total − ignored = raised.
#[test]
fn b122_stats_from_the_information_pages() {
    let mut f = fx_with(config_n(Quirks::fixed(), 2));
    let e10 = f.e(10);
    f.w.engine().place_monitor(e10);
    f.w.engine().commit_hooks();
    f.set(1, OLD);
    f.write_entry(0, 1, OLD | 0x200); // irrelevant (bit 9)
    f.write_entry(0, 2, OLD); // raised, caches entries 2..9
    f.write_entry(0, 3, OLD); // cached
    f.write_entry(1, 10, OLD); // raised (monitored)
    assert_eq!(
        pt_outcomes(&f.w),
        [
            AgentOutcome::IgnoredIrrelevant,
            AgentOutcome::Raised,
            AgentOutcome::IgnoredCache,
            AgentOutcome::Raised
        ]
    );
    let s = vesim::introcore::Introcore::ve_stats(&f.w.machine, &f.w.vcpus);
    assert_eq!(s.len(), 2);
    let got: Vec<[u64; 7]> = s
        .iter()
        .map(|c| {
            [
                c.total,
                c.mm,
                c.page_walk,
                c.ignored_total,
                c.ignored_cache,
                c.ignored_irrelevant,
                c.tsc_count,
            ]
        })
        .collect();
    assert_eq!(got, [[3, 3, 0, 2, 1, 1, 2], [1, 1, 0, 0, 0, 0, 0]]);
    assert!(s[0].tsc_total > 0);
    assert_eq!(s[1].tsc_total, 0);
    for c in &s {
        assert_eq!(
            c.ignored_total,
            c.page_walk + c.ignored_cache + c.ignored_irrelevant
        );
        assert_eq!(c.page_walk + c.mm, c.total);
    }
    let reported: u64 = s.iter().map(|c| c.total - c.ignored_total).sum();
    assert_eq!(reported, f.w.counters.raised);
    assert_eq!(
        vesim::introcore::Introcore::ve_stats(&f.w.machine, &f.w.vcpus),
        s,
        "reading does not reset"
    );
    assert_eq!(f.w.engine().unload_agent(), Ok(true));
    assert!(
        vesim::introcore::Introcore::ve_stats(&f.w.machine, &f.w.vcpus).is_empty(),
        "no agent, no statistics"
    );
}
