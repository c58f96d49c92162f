//! B123–B132: hook_gpa and hook_ptm.

use crate::fx;
use crate::kit::{ept::*, events::*, ve::*, worlds::*};
use vesim::introcore::hooks::{HookCounts, HookKind};
use vesim::quirks::Quirks;
use vesim::world::World;
use vesim_model::ept::EptFlags;
use vesim_model::Gpa;

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
        f.w.intro.hook_counts(f.pt),
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
        f.w.intro.hook_counts(g),
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
    f.w.engine().commit_hooks();
    assert_eq!(f.w.intro.hook_counts(g), HookCounts::default());
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
    f.w.engine().commit_hooks();
    assert_eq!(untrusted_flags(&f.w, g) & RWX, EptFlags::EXECUTE, "2→1");
    f.w.intro.hooks.remove(g.gfn(), WRITE_HOOK);
    f.w.engine().commit_hooks();
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
    let c = f.w.intro.hook_counts(g);
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
    let c = f.w.intro.hook_counts(g);
    assert_eq!((c.write, c.pt, c.conv), (2, 2, 2), "not yet");
    let fl = untrusted_flags(&f.w, g);
    assert!(!fl.contains(EptFlags::WRITE) && !fl.contains(EptFlags::SUPPRESS_VE));
    f.w.engine().commit_hooks();
    assert_eq!(f.w.intro.hook_counts(g), HookCounts::default());
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
    let (e5, e6) = (f.e(5), f.e(6));
    let m5 = f.w.engine().place_monitor(e5);
    let m6 = f.w.engine().place_monitor(e6);
    f.w.engine().commit_hooks();
    let c = f.w.intro.hook_counts(pt);
    assert_eq!((c.write, c.pt), (1, 1));
    f.w.engine().remove_monitor(m5);
    f.w.engine().remove_monitor(m6);
    f.w.engine().commit_hooks();
    assert_eq!(
        f.w.intro.hook_counts(pt).write,
        1,
        "entry 256 still monitored"
    );
    for id in f.w.intro.ptm.monitors(pt.wrapping_add(256 * 8)) {
        f.w.engine().remove_monitor(id);
    }
    f.w.engine().commit_hooks();
    assert_eq!(f.w.intro.hook_counts(pt), HookCounts::default());
    assert!(untrusted_flags(&f.w, pt).contains(EptFlags::WRITE));
}

/// B132: the entry is (addr & 0xFFF) >> 3: an entry with monitors gets its callbacks (and is not
/// cached); an entry with none is cache-added with no callback.
#[test]
fn b132_write_callback_by_entry_offset() {
    let mut f = fx(Quirks::fixed());
    let (e1, e2) = (f.e(1), f.e(2));
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
    f.mov_entry(0, 2, OLD);
    one_ve(&mut f.w, 0);
    assert!(callbacks(&f.w).is_empty());
    assert!(f.w.intro.cache_contains(&f.w.machine, &f.w.guest, e2));
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(callbacks(&f.w), [(e1, 0, OLD)]);
    assert!(!f.w.intro.cache_contains(&f.w.machine, &f.w.guest, e1));
}
