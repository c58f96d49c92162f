//! The deploy / use / unload / redeploy / use lifecycle.

use crate::kit::{agent::*, cache::*, events::*, spec::*, ve::*, worlds::*};
use crate::{fx, unloaded};
use vesim::agent::AgentOutcome;
use vesim::introcore::retpoline;
use vesim::layout;
use vesim::quirks::Quirks;
use vesim_model::ept::EptFlags;

fn lifecycle(q: Quirks) -> Fx {
    let mut f = fx(q);
    let e1 = f.e(1);
    f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
    // Use.
    f.write_entry(0, 1, OLD);
    f.write_entry(0, 2, OLD);
    f.write_entry(0, 2, OLD ^ RW);
    assert_eq!(
        pt_outcomes(&f.w),
        [
            AgentOutcome::Raised,
            AgentOutcome::Raised,
            AgentOutcome::IgnoredCache
        ]
    );
    for k in 0..8 {
        f.w.engine().update_cache(bucket_entry(k), false);
    }
    // Unload.
    assert_eq!(f.w.engine().unload_agent(), Ok(true));
    let untrusted = f.w.intro.untrusted;
    for (g, e) in f.w.machine.ept.view(untrusted).unwrap().entries() {
        assert!(e.flags().contains(EptFlags::SUPPRESS_VE), "{g:?}");
    }
    for v in &f.w.vcpus {
        assert_eq!(v.ve_info, None);
        assert!(!v.ve_enabled);
    }
    // The monitor stays: a write is an exit now.
    let (ve, ncb) = (f.w.counters.ve_total, f.w.intro.callbacks.len());
    f.write_entry(0, 1, OLD ^ RW);
    assert_eq!(f.w.counters.ve_total, ve);
    assert_eq!(callbacks(&f.w)[ncb..], [(e1, OLD, OLD ^ RW)]);
    // Redeploy and use again.
    f.w.engine().redeploy_agent().unwrap();
    assert!(f.w.intro.deployed);
    let n = f.w.events.len();
    f.write_entry(0, 1, OLD);
    assert_eq!(f.w.counters.ve_total, ve + 1);
    assert_eq!(pt_outcomes_since(&f.w, n), [AgentOutcome::Raised]);
    assert_eq!(callbacks(&f.w).last().copied(), Some((e1, OLD ^ RW, OLD)));
    assert_eq!(
        vesim::introcore::Introcore::ve_stats(&f.w.machine, &f.w.vcpus)[0].total,
        1,
        "a new image, new counters"
    );
    f
}

#[test]
fn lifecycle_deploy_use_unload_redeploy_use_fixed() {
    let mut f = lifecycle(Quirks::fixed());
    // Q17 fixed: the bucket filled before the unload starts empty and from slot 0.
    let r = f.w.intro.cache.stats.random_replacements;
    f.w.engine().update_cache(bucket_entry(8), false);
    assert_eq!(f.w.intro.cache.stats.random_replacements, r);
    let slot0 = agent_gpa(layout::AGENT_VECACHE + 0x34 * 0x1000 + 0x2D * 64);
    assert_eq!(mem(&f.w, slot0), bucket_entry(8).0);
}

#[test]
fn lifecycle_deploy_use_unload_redeploy_use_hvmi() {
    let mut f = lifecycle(Quirks::hvmi());
    // Q17 hvmi: the bucket's fill counter survived the redeploy: random replacement at once.
    let r = f.w.intro.cache.stats.random_replacements;
    f.w.engine().update_cache(bucket_entry(8), false);
    assert_eq!(f.w.intro.cache.stats.random_replacements, r + 1);
}

/// After unload and redeploy the agent is protected exactly as after the first deploy (B89):
/// the header has one read, one write and one execute hook.
#[test]
fn lifecycle_redeploy_protects_the_agent_once() {
    let mut f = unloaded(Quirks::fixed());
    f.w.engine().redeploy_agent().unwrap();
    let c = f.w.intro.hook_counts(layout::AGENT_GPA);
    assert_eq!((c.read, c.write, c.execute), (1, 1, 1));
    assert_eq!(agent_hooks(&f.w).len() as u64, AGENT_PAGES);
    assert_eq!(
        handler_bytes(&f.w),
        retpoline(layout::AGENT_GVA + layout::AGENT_VESTUB)
    );
}
