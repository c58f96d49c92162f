//! B131, B133, B135–B137: hook_ptm and hook_pts on process page tables.

use crate::kit::{ept::*, events::*, process::*, spec::*, ve::*, worlds::*};
use vesim::agent::{rip, AgentOutcome};
use vesim::guest::mm::bits;
use vesim::introcore::hooks::HookCounts;
use vesim::introcore::pts::{Owner, SwapRecord, TranslationId};
use vesim::layout::{self, mm_code, veinfo};
use vesim::quirks::Quirks;
use vesim::world::World;
use vesim_model::ept::EptFlags;
use vesim_model::paging::{PageSize, PteFlags};
use vesim_model::vcpu::Gpr;
use vesim_model::{Gla, Gpa, VcpuId};

/// A frame of the process-table window far above anything the few processes here allocate.
const SPARE_TABLE: Gpa = Gpa(0x027F_0000);
/// A frame of the process-page window far above anything allocated here.
const SPARE_PAGE: Gpa = Gpa(0x1F00_0000);

/// B131: the PT_UM_ROOT hook on a process's PML4 is one write GPA hook; the EPT protection is
/// the whole page (write-protected, convertible), a write to the monitored low-half entry
/// reaches its callback, an unmonitored low-half entry is cached at its first raise (the PTM
/// callback ran, B75); in `hvmi` an upper-half entry lies outside the 0x800 bytes the hook
/// covers, so no PTM callback ever runs for it and it is never cached.
#[test]
fn b131_user_pml4_hook_covers_low_half() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut w = World::new(config(q)).unwrap();
        let p = proc_in(&mut w);
        let pml4 = Gpa(p.cr3 & PFN);
        let c = w.intro.hook_counts(pml4);
        assert_eq!((c.write, c.pt, c.conv), (1, 1, 1), "{q:?}");
        let fl = untrusted_flags(&w, pml4);
        assert!(!fl.contains(EptFlags::WRITE) && !fl.contains(EptFlags::SUPPRESS_VE));
        // The monitored entry 0 (the hooked page's PML4E).
        let (e0, g0) = w.guest.entry_value(&w.machine, p.pid, p.va, 4).unwrap();
        assert_eq!(g0, pml4);
        let ncb = w.intro.callbacks.len();
        write_pml4e(&mut w, p.pid, 0, e0 ^ RW);
        assert_eq!(callbacks(&w)[ncb..], [(g0, e0, e0 ^ RW)], "{q:?}");
        // Unmonitored low-half entry 5.
        let e5 = pml4.wrapping_add(5 * 8);
        let v = FREE_FRAME.0 | P | RW;
        let n = w.events.len();
        write_pml4e(&mut w, p.pid, 5, v);
        write_pml4e(&mut w, p.pid, 5, v ^ RW);
        assert_eq!(
            pt_outcomes_since(&w, n),
            [AgentOutcome::Raised, AgentOutcome::IgnoredCache],
            "{q:?}"
        );
        assert!(w.intro.cache_contains(&w.machine, &w.guest, e5));
        if q == Quirks::hvmi() {
            let e = pml4.wrapping_add(0x1A0 * 8);
            let (n, ncb) = (w.events.len(), w.intro.callbacks.len());
            write_pml4e(&mut w, p.pid, 0x1A0, v);
            write_pml4e(&mut w, p.pid, 0x1A0, v ^ RW);
            assert_eq!(
                pt_outcomes_since(&w, n),
                [AgentOutcome::Raised, AgentOutcome::Raised]
            );
            assert!(!w.intro.cache_contains(&w.machine, &w.guest, e));
            assert_eq!(w.intro.callbacks.len(), ncb);
        }
    }
}

/// B133: an irrelevant change of a hooked page's entry (equal under the monitored bits, or
/// neither value present) runs no swap callback: caching attributes (MOV, LOCK CMPXCHG, LOCK
/// XOR), an A-bit trim, a not-present to not-present write, and, at introcore itself, a raise
/// whose old and new values are equal under the monitored bits. A relevant one does run it.
#[test]
fn b133_irrelevant_change_runs_no_swap_callback() {
    let mut w = World::new(config(Quirks::fixed())).unwrap();
    let p = proc_in(&mut w);
    let (leaf, pte) = w.guest.entry_value(&w.machine, p.pid, p.va, 1).unwrap();
    for form in 0..3 {
        w.mm_set_caching(VcpuId(0), p.pid, p.va, PWT, form).unwrap();
        w.mm_set_caching(VcpuId(0), p.pid, p.va, 0, form).unwrap();
    }
    w.mm_trim(VcpuId(0), p.pid, p.va).unwrap();
    assert_eq!(mem(&w, pte) & !(A | D), leaf & !(A | D));
    assert!(swaps_of(&w, p.id).is_empty());
    // Introcore's own filter: a raise whose page says (cur, cur | PWT), equal under the bits.
    let ncb = w.intro.callbacks.len();
    let cur = mem(&w, pte);
    {
        let cr3 = p.cr3;
        let gla = w.guest.entry_gla(p.va, 1);
        let v = &mut w.vcpus[0];
        v.cr3 = cr3;
        v.rip = layout::MM_CODE_GVA + mm_code::MOV.0;
        v.set_reg(Gpr::Rdi, gla);
        v.set_reg(Gpr::Rsi, cur ^ RW);
    }
    to_step(&mut w, 0, rip::PT_RAISE);
    let page = w.ve_page(VcpuId(0)).unwrap();
    assert_eq!(mem(&w, page.wrapping_add(veinfo::OLD_VALUE)), cur);
    w.machine
        .mem
        .write_u64(page.wrapping_add(veinfo::NEW_VALUE), cur | PWT);
    w.run_agent(VcpuId(0), 10_000).unwrap();
    assert_eq!(callbacks(&w)[ncb..], [(pte, cur, cur | PWT)]);
    assert_eq!(mem(&w, pte), cur | PWT);
    assert!(swaps_of(&w, p.id).is_empty());
    // A relevant change runs it (RW cleared by LOCK AND).
    w.mm_protect(VcpuId(0), p.pid, p.va, false, true).unwrap();
    assert_eq!(mem(&w, pte), (cur | PWT) & !RW);
    let s = swaps_of(&w, p.id);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].1, (cur | PWT) & !RW);
    // Not present to not present.
    w.mm_swap_out(VcpuId(0), p.pid, p.va).unwrap();
    let n = swaps_of(&w, p.id).len();
    assert_eq!(swaps_of(&w, p.id)[n - 1].1, 0, "swapped out");
    w.mm_unmap(VcpuId(0), p.pid, p.va).unwrap();
    assert_eq!(mem(&w, pte), 0);
    assert_eq!(
        swaps_of(&w, p.id).len(),
        n,
        "swap entry -> 0: neither present"
    );
}

/// B135: a PDE pointed at another page table: the PTE monitor leaves the old table (whose write
/// hook goes at the commit) and is placed on the new table's entry, and the swap callback runs
/// with the new leaf; a later write to the new leaf reaches the hook.
#[test]
fn b135_upper_level_change_rehooks_lower_levels() {
    let mut w = World::new(config(Quirks::fixed())).unwrap();
    let p = proc_in(&mut w);
    let (old_pde, pde) = w.guest.entry_value(&w.machine, p.pid, p.va, 2).unwrap();
    let (old_leaf, old_pte) = w.guest.entry_value(&w.machine, p.pid, p.va, 1).unwrap();
    let old_pt = old_pte.page_base();
    let upper: Vec<Gpa> = [4u8, 3]
        .iter()
        .map(|l| w.guest.entry_value(&w.machine, p.pid, p.va, *l).unwrap().1)
        .collect();
    // A new page table whose entry for `va` maps another frame.
    let p1 = (p.va >> 12) & 0x1FF;
    let new_pte = SPARE_TABLE.wrapping_add(p1 * 8);
    let new_leaf = SPARE_PAGE.0 | P | RW | US | A | D;
    w.machine.mem.write(SPARE_TABLE, &[0u8; 4096]);
    w.machine.mem.write_u64(new_pte, new_leaf);
    let new_pde = (old_pde & !PFN) | SPARE_TABLE.0;
    let gla = w.guest.entry_gla(p.va, 2);
    w.mm_exec(VcpuId(0), p.pid, mm_code::MOV, gla, new_pde, 0)
        .unwrap();
    assert_eq!(mem(&w, pde) & !(A | D), new_pde & !(A | D));
    assert_eq!(
        w.intro.swaps.last().copied(),
        Some(SwapRecord {
            hook: p.id,
            va: p.va,
            old: old_leaf,
            new: new_leaf
        })
    );
    let h = &w.intro.pts.hooks[&p.id];
    let levels: Vec<(u8, Gpa)> = h.levels.iter().map(|l| (l.level, l.entry)).collect();
    assert_eq!(
        levels,
        [(4, upper[0]), (3, upper[1]), (2, pde), (1, new_pte)]
    );
    assert_eq!(h.leaf_value(), new_leaf);
    assert!(w.intro.ptm.is_monitored(new_pte));
    assert!(!w.intro.ptm.is_monitored(old_pte));
    assert_eq!(w.intro.hook_counts(old_pt), HookCounts::default());
    let fl = untrusted_flags(&w, old_pt);
    assert!(fl.contains(EptFlags::WRITE) && fl.contains(EptFlags::SUPPRESS_VE));
    let c = w.intro.hook_counts(SPARE_TABLE);
    assert_eq!((c.write, c.pt, c.conv), (1, 1, 1));
    let fl = untrusted_flags(&w, SPARE_TABLE);
    assert!(!fl.contains(EptFlags::WRITE) && !fl.contains(EptFlags::SUPPRESS_VE));
    // The new leaf is what the hook watches now.
    let gla = w.guest.entry_gla(p.va, 1);
    w.mm_exec(VcpuId(0), p.pid, mm_code::MOV, gla, new_leaf ^ RW, 0)
        .unwrap();
    assert_eq!(mem(&w, new_pte), new_leaf ^ RW);
    assert_eq!(
        swaps_of(&w, p.id),
        [(old_leaf, new_leaf), (new_leaf, new_leaf ^ RW)]
    );
}

/// B136: a parent that becomes invalid gives a swap callback with New = 0; when it comes back
/// the leaf is hooked again (0 → leaf); and an upper level remapped to a table with the same
/// leaf still runs the callback, with Old == New.
#[test]
fn b136_parent_invalidated_gives_swap_with_new_zero() {
    let mut w = World::new(config(Quirks::fixed())).unwrap();
    let p = proc_in(&mut w);
    let (old_pde, pde) = w.guest.entry_value(&w.machine, p.pid, p.va, 2).unwrap();
    let (leaf, pte) = w.guest.entry_value(&w.machine, p.pid, p.va, 1).unwrap();
    let gla = w.guest.entry_gla(p.va, 2);
    w.mm_exec(VcpuId(0), p.pid, mm_code::MOV, gla, 0, 0)
        .unwrap();
    assert_eq!(swaps_of(&w, p.id), [(leaf, 0)]);
    let h = &w.intro.pts.hooks[&p.id];
    assert_eq!(h.levels.last().map(|l| (l.level, l.entry)), Some((2, pde)));
    assert!(!w.intro.ptm.is_monitored(pte));
    // Back.
    w.mm_exec(VcpuId(0), p.pid, mm_code::MOV, gla, old_pde, 0)
        .unwrap();
    assert_eq!(swaps_of(&w, p.id), [(leaf, 0), (0, leaf)]);
    assert!(w.intro.ptm.is_monitored(pte));
    // The same leaf under another table.
    let mut table = [0u8; 4096];
    w.machine.mem.read(pte.page_base(), &mut table);
    w.machine.mem.write(SPARE_TABLE, &table);
    let cur = mem(&w, pde);
    w.mm_exec(
        VcpuId(0),
        p.pid,
        mm_code::MOV,
        gla,
        (cur & !PFN) | SPARE_TABLE.0,
        0,
    )
    .unwrap();
    assert_eq!(swaps_of(&w, p.id), [(leaf, 0), (0, leaf), (leaf, leaf)]);
}

/// B137: the hook walks down and stops at a non-present entry (and is completed when the guest
/// maps the page) or at a large page (2 MiB at the PDE, 1 GiB at the PDPTE).
#[test]
fn b137_hook_stops_at_non_present_or_large_page() {
    let mut w = World::new(config(Quirks::fixed())).unwrap();
    let p = proc_in(&mut w);
    // The next 2 MiB of the same page directory: its PDE is not present.
    let va2 = p.va + 0x20_0000;
    let (pde2_value, pde2) = w.guest.entry_value(&w.machine, p.pid, va2, 2).unwrap();
    assert_eq!(pde2_value, 0);
    let upper: Vec<Gpa> = [4u8, 3]
        .iter()
        .map(|l| w.guest.entry_value(&w.machine, p.pid, va2, *l).unwrap().1)
        .collect();
    let id2 = w
        .engine()
        .hook_translation(p.cr3, va2, Owner::Process(p.pid));
    w.engine().commit_hooks();
    let entries = |w: &World, id: TranslationId| -> Vec<(u8, Gpa)> {
        w.intro.pts.hooks[&id]
            .levels
            .iter()
            .map(|l| (l.level, l.entry))
            .collect()
    };
    assert_eq!(entries(&w, id2), [(4, upper[0]), (3, upper[1]), (2, pde2)]);
    assert_eq!(w.intro.pts.hooks[&id2].leaf_value(), 0);
    assert!(w.intro.ptm.is_monitored(pde2));
    // The guest maps it: the PDE write hooks the new table, the PTE write runs the callback.
    w.mm_map(VcpuId(0), p.pid, va2, bits::RW).unwrap();
    let (leaf2, pte2) = w.guest.entry_value(&w.machine, p.pid, va2, 1).unwrap();
    assert_eq!(
        entries(&w, id2),
        [(4, upper[0]), (3, upper[1]), (2, pde2), (1, pte2)]
    );
    assert_eq!(swaps_of(&w, id2), [(0, leaf2)]);
    // Large pages in the System CR3.
    const VA_2M: u64 = 0xFFFF_F800_4000_0000;
    const VA_1G: u64 = 0xFFFF_F840_0000_0000;
    for (va, gpa, size, levels) in [
        (VA_2M, Gpa(0x0800_0000), PageSize::Size2M, 3usize),
        (VA_1G, Gpa(0x4000_0000), PageSize::Size1G, 2),
    ] {
        w.guest
            .tables
            .map(&mut w.machine.mem, Gla(va), gpa, size, PteFlags::WRITABLE)
            .unwrap();
        let cr3 = w.guest.cr3;
        let id = w.engine().hook_translation(cr3, va, Owner::Process(p.pid));
        let h = &w.intro.pts.hooks[&id];
        assert_eq!(h.levels.len(), levels, "{size:?}");
        let last = h.levels[levels - 1];
        assert_eq!(last.level, size.leaf_level());
        assert_eq!(
            last.entry,
            w.guest.entry_gpa(&w.machine, va, last.level).unwrap()
        );
        assert_eq!(last.value & (P | PS | PFN), P | PS | gpa.0);
        assert_eq!(h.leaf_value(), last.value);
        assert_eq!(h.leaf_size(), size.bytes());
    }
}
