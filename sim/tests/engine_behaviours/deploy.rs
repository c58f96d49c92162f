//! B91, B93, B94: what the deploy hooks and when pages become convertible.

use crate::fx_with;
use crate::kit::{agent::*, ept::*, events::*, spec::*, ve::*, worlds::*};
use std::collections::BTreeSet;
use vesim::agent::AgentOutcome;
use vesim::layout;
use vesim::quirks::Quirks;
use vesim::world::{World, WorldConfig};
use vesim_model::ept::EptFlags;
use vesim_model::{Gfn, Gpa};

/// B91: a swap hook (a translation hook in the System CR3) on every agent page: the four
/// entries translating the page are monitored, and the agent's table pages are write-protected
/// and convertible.
#[test]
fn b91_swap_hooks_on_every_agent_page() {
    let w = World::new(config(Quirks::fixed())).unwrap();
    let hooks = agent_hooks(&w);
    let vas: BTreeSet<u64> = hooks.iter().map(|(_, va)| *va).collect();
    let want: BTreeSet<u64> = (0..AGENT_PAGES).map(|i| agent_at(i * 0x1000)).collect();
    assert_eq!(hooks.len() as u64, AGENT_PAGES);
    assert_eq!(vas, want);
    for (id, va) in hooks {
        let h = &w.intro.pts.hooks[&id];
        assert_eq!(h.cr3, w.guest.cr3);
        let entries: Vec<(u8, Gpa)> = h.levels.iter().map(|l| (l.level, l.entry)).collect();
        let expect: Vec<(u8, Gpa)> = [4u8, 3, 2, 1]
            .iter()
            .map(|l| (*l, w.guest.entry_gpa(&w.machine, va, *l).unwrap()))
            .collect();
        assert_eq!(entries, expect, "{va:#x}");
        for l in &h.levels {
            assert!(w.intro.ptm.monitors(l.entry).contains(&l.monitor));
            assert_eq!(l.value, mem(&w, l.entry));
        }
        let pte = h.leaf_value();
        assert_eq!(pte & P, P);
        assert_eq!(Gpa(pte & PFN), agent_gpa(va - layout::AGENT_GVA));
    }
    for level in 1..=4u8 {
        let t = w
            .guest
            .entry_gpa(&w.machine, layout::AGENT_GVA, level)
            .unwrap()
            .page_base();
        let c = w.intro.hook_counts(t);
        assert!(c.pt >= 1 && c.conv == c.pt, "level {level}: {c:?}");
        let fl = untrusted_flags(&w, t);
        assert!(!fl.contains(EptFlags::WRITE) && !fl.contains(EptFlags::SUPPRESS_VE));
    }
}

/// B93/B94: with the loader not complete, the page-table hooks deploy placed count in PtCount
/// but nothing is convertible; completing the loader makes ConvCount = PtCount and every page
/// with PtCount convertible (once only); disabling brings ConvCount to 0 and nothing is
/// convertible.
#[test]
fn b93_b94_pages_convertible_only_after_the_loader() {
    let mut f = fx_with(WorldConfig {
        ve: false,
        ..config(Quirks::fixed())
    });
    let untrusted = f.w.intro.untrusted;
    let convertible = |w: &World| -> Vec<Gfn> {
        w.machine
            .ept
            .view(untrusted)
            .unwrap()
            .entries()
            .filter(|(_, e)| !e.flags().contains(EptFlags::SUPPRESS_VE))
            .map(|(g, _)| g)
            .collect()
    };
    let pt_pages: Vec<Gfn> =
        f.w.intro
            .hooks
            .pages()
            .filter(|(_, c)| c.pt > 0)
            .map(|(g, _)| g)
            .collect();
    assert!(pt_pages.len() >= 5, "the agent's four tables and DATA's");
    assert!(f.w.intro.hooks.pages().all(|(_, c)| c.conv == 0));
    assert!(convertible(&f.w).is_empty());
    // A monitored write before the loader completes: an ordinary exit, no #VE.
    f.write_entry(0, 256, OLD);
    assert_eq!(f.w.counters.ve_total, 0);
    assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    // The loader completes.
    f.w.engine().complete_loader();
    for (g, c) in f.w.intro.hooks.pages() {
        assert_eq!(c.conv, c.pt, "{g:?}");
    }
    assert_eq!(convertible(&f.w), pt_pages);
    f.w.engine().complete_loader();
    for (g, c) in f.w.intro.hooks.pages() {
        assert_eq!(c.conv, c.pt, "enabling twice changes nothing: {g:?}");
    }
    f.write_entry(0, 256, OLD ^ RW);
    assert_eq!(f.w.counters.ve_total, 1);
    assert_eq!(pt_outcomes(&f.w), [AgentOutcome::Raised]);
    // Disable.
    f.w.intro.hooks.disable_ve(&mut f.w.machine.ept);
    assert!(f.w.intro.hooks.pages().all(|(_, c)| c.conv == 0));
    assert!(convertible(&f.w).is_empty());
}
