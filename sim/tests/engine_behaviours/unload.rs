//! B95–B99, B140: the unload, its gate and what it undoes.

use crate::kit::{agent::*, ept::*, events::*, ve::*, worlds::*};
use crate::{fx, fx_with, unloaded};
use std::collections::BTreeSet;
use vesim::agent::rip;
use vesim::introcore::hooks::HookCounts;
use vesim::introcore::lifecycle::UnloadError;
use vesim::layout;
use vesim::quirks::Quirks;
use vesim::world::World;
use vesim_model::ept::EptFlags;
use vesim_model::{Gfn, Gpa, VcpuId};

/// B95: an unload needs VE initialised and the agent deployed, and not already pending.
#[test]
fn b95_remove_agent_needs_deployed_and_not_pending() {
    let mut f = fx(Quirks::fixed());
    assert_eq!(f.w.engine().remove_agent(), Ok(()));
    assert!(f.w.intro.pending_unload);
    assert_eq!(
        f.w.engine().remove_agent(),
        Err(UnloadError::NotNeeded),
        "pending"
    );
    // Until the unloader runs (B96) page tables stay convertible: a write still #VEs.
    f.write_entry(0, 256, OLD);
    assert_eq!(f.w.counters.ve_total, 1);
    f.w.engine().deploy_unloader();
    assert!(f.w.engine().deliver_for_unload());
    f.w.engine().complete_unloader();
    assert_eq!(
        f.w.engine().remove_agent(),
        Err(UnloadError::NotNeeded),
        "not deployed"
    );
    assert!(!f.w.intro.pending_unload);
    assert_eq!(f.w.engine().unload_agent(), Err(UnloadError::NotNeeded));
    // Not initialised.
    let mut w = World::new(config(Quirks::fixed())).unwrap();
    w.intro.initialized = false;
    assert_eq!(w.engine().remove_agent(), Err(UnloadError::NotNeeded));
    assert!(!w.intro.pending_unload);
}

/// B96: once the unloader is deployed no page is convertible (ConvCount 0 everywhere) and a
/// monitored write is an ordinary EPT-violation exit that introcore handles.
#[test]
fn b96_unloader_disables_ve_no_page_convertible() {
    let mut f = fx(Quirks::fixed());
    let e1 = f.e(1);
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
    assert_eq!(f.w.engine().remove_agent(), Ok(()));
    f.w.engine().deploy_unloader();
    let untrusted = f.w.intro.untrusted;
    for (g, e) in f.w.machine.ept.view(untrusted).unwrap().entries() {
        assert!(e.flags().contains(EptFlags::SUPPRESS_VE), "{g:?}");
    }
    assert!(f.w.intro.hooks.pages().all(|(_, c)| c.conv == 0));
    f.write_entry(0, 1, OLD);
    assert_eq!(f.w.counters.ve_total, 0);
    assert_eq!(f.w.counters.exits.get(&48), Some(&1));
    assert_eq!(callbacks(&f.w), [(e1, 0, OLD)]);
    assert_eq!(f.get(1), OLD);
}

/// What the deploy put in place, for "nothing was unhooked".
#[derive(Debug, PartialEq, Eq)]
struct Deployed {
    deployed: bool,
    handler: [u8; 24],
    info: Vec<Option<Gpa>>,
    swap_hooks: usize,
    untrusted: Vec<EptFlags>,
    protected: Vec<EptFlags>,
}

fn deployed_state(w: &World) -> Deployed {
    let pages = (0..AGENT_PAGES).map(|i| agent_gpa(i * 0x1000));
    Deployed {
        deployed: w.intro.deployed,
        handler: handler_bytes(w),
        info: w.vcpus.iter().map(|v| v.ve_info).collect(),
        swap_hooks: agent_hooks(w).len(),
        untrusted: pages.clone().map(|g| untrusted_flags(w, g)).collect(),
        protected: pages.map(|g| protected_flags(w, g)).collect(),
    }
}

/// B97/B140: while a VCPU's RIP is in the agent (or at the hooked IDT[20] handler) the unload
/// is refused (answer 1) and nothing is unhooked; once the agent has returned it succeeds.
#[test]
fn b97_b140_unload_gate_refuses_while_a_rip_is_in_the_agent() {
    let mut f = fx_with(config_n(Quirks::fixed(), 2));
    let e1 = f.e(1);
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
    let before = deployed_state(&f.w);
    assert!(before.deployed && before.info.iter().all(Option::is_some));
    let at = f.prep_store(1, egla(1), OLD);
    deliver(&mut f.w, 1);
    assert_eq!(f.w.vcpus[1].rip, layout::OS_VE_HANDLER_GVA);
    assert_eq!(
        f.w.engine().unload_agent(),
        Ok(false),
        "RIP at the IDT[20] handler"
    );
    to_step(&mut f.w, 1, rip::PT_DECODE);
    assert_eq!(f.w.engine().unload_agent(), Ok(false), "RIP in the agent");
    assert!(f.w.intro.pending_unload);
    assert_eq!(deployed_state(&f.w), before, "nothing was unhooked");
    // The agent finishes its #VE; the raise is still dispatched.
    f.w.run_agent(VcpuId(1), 10_000).unwrap();
    run_to(&mut f.w, 1, at + 3, 10);
    assert_eq!(callbacks(&f.w), [(e1, 0, OLD)]);
    assert_eq!(f.get(1), OLD);
    assert_eq!(f.w.engine().unload_agent(), Ok(true));
    assert!(!f.w.intro.deployed);
    assert!(f.w.vcpus.iter().all(|v| v.ve_info.is_none()));
}

/// B98: the unhook clears every VCPU's information page (#VE off) and gives the OS handler its
/// original bytes back (the guest model's handler page is INT3 filler, so 24 × 0xCC).
#[test]
fn b98_unhook_restores_the_os_handler_and_clears_info_pages() {
    let f = unloaded(Quirks::fixed());
    for v in &f.w.vcpus {
        assert_eq!(v.ve_info, None);
        assert!(!v.ve_enabled);
    }
    assert_eq!(handler_bytes(&f.w), [0xCC; 24]);
}

/// B98 steps 1, 4 and 5: no information page, no swap hook (so no agent table page is
/// monitored any more), protected-view rights RW- on every agent page.
#[test]
fn b98_unhook_clears_info_pages_swap_hooks_and_protected_rights() {
    let f = unloaded(Quirks::fixed());
    let w = &f.w;
    assert!(w.vcpus.iter().all(|v| v.ve_info.is_none() && !v.ve_enabled));
    assert!(agent_hooks(w).is_empty());
    let monitored: BTreeSet<Gpa> = w.intro.ptm.monitored_entries().into_iter().collect();
    let want: BTreeSet<Gpa> = [f.e(1), f.e(256)].into_iter().collect();
    assert_eq!(monitored, want, "only the fixture's own monitors remain");
    let pt_pages: Vec<Gfn> = w
        .intro
        .hooks
        .pages()
        .filter(|(_, c)| c.pt > 0)
        .map(|(g, _)| g)
        .collect();
    assert_eq!(pt_pages, [f.pt.gfn()]);
    for i in 0..AGENT_PAGES {
        let g = agent_gpa(i * 0x1000);
        assert_eq!(protected_flags(w, g) & RWX, RW_, "agent page {i}");
    }
}

/// B98 step 3: the hook object is destroyed, so no agent page is hooked in the untrusted view
/// any more and every one is RWX again (B124).
#[test]
fn b98_unhook_destroys_the_untrusted_view_protection() {
    let f = unloaded(Quirks::fixed());
    for i in 0..AGENT_PAGES {
        let g = agent_gpa(i * 0x1000);
        assert_eq!(
            f.w.intro.hook_counts(g),
            HookCounts::default(),
            "agent page {i}"
        );
        assert_eq!(untrusted_flags(&f.w, g) & RWX, RWX, "agent page {i}");
    }
}

/// B99: the unloader completing resets the state: not deployed, not pending; the cache writer
/// stops (B72), and a redeploy is allowed (which it is not while the unload is pending).
#[test]
fn b99_complete_unloader_resets_state() {
    let mut f = fx(Quirks::fixed());
    assert_eq!(f.w.engine().remove_agent(), Ok(()));
    f.w.engine().deploy_unloader();
    assert!(f.w.engine().deliver_for_unload());
    assert!(
        f.w.engine().redeploy_agent().is_err(),
        "unload still pending"
    );
    f.w.engine().complete_unloader();
    assert!(!f.w.intro.deployed && !f.w.intro.pending_unload);
    let e5 = f.e(5);
    f.w.engine().update_cache(e5, false);
    assert!(!f.w.intro.cache_contains(&f.w.machine, &f.w.guest, e5));
    assert!(f.w.engine().redeploy_agent().is_ok());
    assert!(f.w.intro.deployed);
}
