//! The quirks Q16, Q24 and Q27 through the engine, in both settings.

use crate::kit::{ept::*, events::*, process::*, spec::*, ve::*, worlds::*};
use crate::{fx, fx_on};
use vesim::agent::AgentOutcome;
use vesim::quirks::Quirks;
use vesim::world::World;
use vesim_model::ept::{EptEntry, EptFlags, EptView};
use vesim_model::paging::{self_map_entry_address, PteFlags};
use vesim_model::{Gla, Gpa, ViewId};

/// Q16 through the lifecycle: entry 1 is cached by a raise, the unload is requested (pages stay
/// convertible until the unloader runs), then a monitor is placed on entry 1 and the guest
/// changes it. `hvmi` does not evict, so the agent ignores the change; `fixed` evicts and
/// raises. Once the unloader runs, the write is an exit and introcore sees it either way.
fn q16_run(q: Quirks) -> (Fx, Gpa) {
    let mut f = fx(q);
    let e1 = f.e(1);
    f.write_entry(0, 1, OLD);
    assert!(f.w.intro.cache_contains(&f.w.machine, &f.w.guest, e1));
    assert_eq!(f.w.engine().remove_agent(), Ok(()));
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
    f.write_entry(0, 1, OLD ^ RW);
    (f, e1)
}

fn q16_after_unloader(f: &mut Fx, e1: Gpa) {
    f.w.engine().deploy_unloader();
    let (ve, ncb) = (f.w.counters.ve_total, f.w.intro.callbacks.len());
    f.write_entry(0, 1, OLD);
    assert_eq!(f.w.counters.ve_total, ve);
    assert_eq!(callbacks(&f.w)[ncb..], [(e1, OLD ^ RW, OLD)]);
}

#[test]
fn q16_no_evict_while_unload_pending_hvmi() {
    let (mut f, e1) = q16_run(Quirks::hvmi());
    assert!(f.w.intro.cache_contains(&f.w.machine, &f.w.guest, e1));
    assert_eq!(
        pt_outcomes(&f.w),
        [AgentOutcome::Raised, AgentOutcome::IgnoredCache]
    );
    assert!(callbacks(&f.w).is_empty(), "the monitored change is missed");
    q16_after_unloader(&mut f, e1);
}

#[test]
fn q16_no_evict_while_unload_pending_fixed() {
    let (mut f, e1) = q16_run(Quirks::fixed());
    assert!(!f.w.intro.cache_contains(&f.w.machine, &f.w.guest, e1));
    assert_eq!(
        pt_outcomes(&f.w),
        [AgentOutcome::Raised, AgentOutcome::Raised]
    );
    assert_eq!(callbacks(&f.w), [(e1, OLD, OLD ^ RW)]);
    q16_after_unloader(&mut f, e1);
}

/// Q24 set-up: untrusted view 1, protected view 2, and a view 0 installed by hand (RWX, not
/// convertible). A real EPT-violation exit on DATA's table (the loader not complete yet) leaves
/// `ExitGpa` there; after the loader, the untrusted view's entry for that page drifts to RWX;
/// then a raised #VE on another table (DATA2's) is dispatched, and page-rights validation runs
/// on the stale `ExitGpa` in the view introcore believes current.
fn q24_run(q: Quirks) -> Fx {
    let mut c = config(q);
    c.guest.untrusted_view = ViewId(1);
    c.guest.protected_view = ViewId(2);
    c.ve = false;
    let mut w = World::new(c).unwrap();
    let all = RWX | EptFlags::SUPPRESS_VE;
    w.machine
        .ept
        .insert(ViewId(0), EptView::new(EptEntry(all.bits())))
        .unwrap();
    let mut f = fx_on(w);
    f.w.guest
        .map_new(&mut f.w.machine, DATA2, PteFlags::WRITABLE)
        .unwrap();
    let pt2 =
        f.w.guest
            .entry_gpa(&f.w.machine, DATA2, 1)
            .unwrap()
            .page_base();
    let e2 = pt2.wrapping_add(8);
    f.w.engine().place_monitor(e2);
    f.w.engine().commit_hooks();
    f.write_entry(0, 256, OLD);
    assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    assert_eq!(f.w.counters.ve_total, 0);
    f.w.engine().complete_loader();
    f.w.machine
        .ept
        .view_mut(ViewId(1))
        .unwrap()
        .set_rights(f.pt.gfn(), RWX);
    let at = f.prep_store(0, self_map_entry_address(S, Gla(DATA2 + 0x1000), 1).0, OLD);
    run_to(&mut f.w, 0, at + 3, 10_000);
    assert_eq!(pt_outcomes(&f.w), [AgentOutcome::Raised]);
    assert_eq!(callbacks(&f.w).last().copied(), Some((e2, 0, OLD)));
    f
}

#[test]
fn q24_eptp_zero_hvmi() {
    let f = q24_run(Quirks::hvmi());
    assert_eq!(
        view_flags(&f.w, ViewId(0), f.pt) & RWX,
        R_X,
        "view 0 written"
    );
    assert_eq!(view_flags(&f.w, ViewId(1), f.pt) & RWX, RWX, "view 1 not");
}

#[test]
fn q24_eptp_zero_fixed() {
    let f = q24_run(Quirks::fixed());
    assert_eq!(
        view_flags(&f.w, ViewId(0), f.pt) & RWX,
        RWX,
        "view 0 untouched"
    );
    assert_eq!(
        view_flags(&f.w, ViewId(1), f.pt) & RWX,
        R_X,
        "view 1 written"
    );
}

/// Q27: three relevant writes to entry 0x1A0 (upper half) of a process PML4 that a user-VA
/// translation hook monitors.
fn q27_run(q: Quirks) -> (World, Vec<AgentOutcome>, Gpa) {
    let mut w = World::new(config(q)).unwrap();
    let p = proc_in(&mut w);
    let e = Gpa((p.cr3 & PFN) + 0x1A0 * 8);
    let (n, ncb) = (w.events.len(), w.intro.callbacks.len());
    let v = FREE_FRAME.0 | P | RW;
    for value in [v, v ^ RW, v] {
        write_pml4e(&mut w, p.pid, 0x1A0, value);
        assert_eq!(mem(&w, e), value);
    }
    assert_eq!(
        w.intro.callbacks.len(),
        ncb,
        "no callback for the upper half"
    );
    let o = pt_outcomes_since(&w, n);
    (w, o, e)
}

#[test]
fn q27_user_pml4_hvmi() {
    let (w, o, e) = q27_run(Quirks::hvmi());
    assert_eq!(o, [AgentOutcome::Raised; 3]);
    assert!(!w.intro.cache_contains(&w.machine, &w.guest, e));
}

#[test]
fn q27_user_pml4_fixed() {
    let (w, o, e) = q27_run(Quirks::fixed());
    assert_eq!(
        o,
        [
            AgentOutcome::Raised,
            AgentOutcome::IgnoredCache,
            AgentOutcome::IgnoredCache
        ]
    );
    assert!(w.intro.cache_contains(&w.machine, &w.guest, e));
}
