//! 4. Statistics (I5): the section 3 identities in `fixed`, and their failure in `hvmi` (Q18).

use crate::kit::{asm::*, props::*, pt_world::*};
use crate::{Q18_CASES, STATISTICS_CASES};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use vesim::layout::veinfo;
use vesim::quirks::{Profile, Quirks};
use vesim::world::World;
use vesim_model::VcpuId;

/// The identities of VE-SEMANTICS section 3 that fail: (harness, agent).
fn identity_failures(w: &World) -> (Vec<String>, Vec<String>) {
    let c = &w.counters;
    let mut harness = Vec::new();
    let check = |list: &mut Vec<String>, name: &str, a: u64, b: u64| {
        if a != b {
            list.push(format!("{name}: {a} != {b}"));
        }
    };
    check(
        &mut harness,
        "total = page walk + PT write + unknown",
        c.ve_total,
        c.ve_page_walk + c.ve_pt_write + c.ve_unknown,
    );
    check(
        &mut harness,
        "PT write = the five PT-write outcomes",
        c.ve_pt_write,
        c.ignored_irrelevant + c.ignored_cache + c.raised + c.emulated_by_introcore + c.rejected,
    );
    check(
        &mut harness,
        "page walk = set + raised",
        c.ve_page_walk,
        c.page_walk_set + c.page_walk_raised,
    );
    check(
        &mut harness,
        "cache hits = ignored_cache",
        c.cache_hits,
        c.ignored_cache,
    );
    check(
        &mut harness,
        "cache lookups = relevant accepted writes",
        c.cache_lookups,
        c.ignored_cache + c.raised,
    );
    let mut sum = [0u64; 6];
    let offs = [
        veinfo::VE_TOTAL,
        veinfo::VE_MM,
        veinfo::VE_PAGE_WALK,
        veinfo::VE_IGNORED_TOTAL,
        veinfo::VE_IGNORED_CACHE,
        veinfo::VE_IGNORED_IRRELEVANT,
    ];
    for cpu in 0..w.vcpus.len() {
        if let Some(page) = w.ve_page(VcpuId(cpu)) {
            for (k, off) in offs.iter().enumerate() {
                sum[k] += w.machine.mem.read_u64(page.wrapping_add(*off));
            }
        }
    }
    let [total, mm, walk, ign_total, ign_cache, ign_irr] = sum;
    let mut agent = Vec::new();
    check(&mut agent, "VeTotal = total #VEs", total, c.ve_total);
    check(
        &mut agent,
        "VePageWalk = page-walk #VEs",
        walk,
        c.ve_page_walk,
    );
    check(
        &mut agent,
        "VeMm = PT-write #VEs not refused",
        mm,
        c.ignored_irrelevant + c.ignored_cache + c.raised,
    );
    check(
        &mut agent,
        "VeIgnoredIrrelevant = ignored_irrelevant",
        ign_irr,
        c.ignored_irrelevant,
    );
    check(
        &mut agent,
        "VeIgnoredCache = ignored_cache",
        ign_cache,
        c.ignored_cache,
    );
    check(
        &mut agent,
        "VeIgnoredTotal = irrelevant + cache + page walks not raised",
        ign_total,
        ign_irr + ign_cache + c.page_walk_set,
    );
    (harness, agent)
}

/// Runs a scenario, checking `at_rest` whenever no VCPU is inside the agent; returns the world
/// with every agent invocation finished.
fn run_scenario(
    sc: &Scenario,
    mut at_rest: impl FnMut(&World) -> Result<(), TestCaseError>,
) -> Result<World, TestCaseError> {
    let mut pw = build(sc);
    for step in 0..SCENARIO_STEPS_MAX {
        let Some(cpu) = pw.pick(sc.schedule[step % sc.schedule.len()]) else {
            break;
        };
        let r = pw.w.step(VcpuId(cpu));
        prop_assert!(r.is_ok(), "step {}: VCPU {} stopped: {:?}", step, cpu, r);
        if pw.quiescent() {
            at_rest(&pw.w)?;
        }
    }
    pw.drain(1000);
    prop_assert!(pw.quiescent());
    at_rest(&pw.w)?;
    Ok(pw.w)
}

proptest! {
    #![proptest_config(config(STATISTICS_CASES))]

    /// I5 in `fixed`: the harness counters and the agent's own counters (summed over VCPUs)
    /// obey every identity of VE-SEMANTICS section 3, whenever no agent is running.
    #[test]
    fn i5_fixed_counters_obey_the_identities(sc in scenario(Just(Profile::Fixed).boxed(), 0.3)) {
        run_scenario(&sc, |w| {
            let (h, a) = identity_failures(w);
            prop_assert!(h.is_empty() && a.is_empty(), "harness {:?}, agent {:?}", h, a);
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(config(Q18_CASES))]

    /// Q18 in `hvmi`: once a break happened, an agent identity fails (VeIgnoredTotal also
    /// counts the break); the harness identities still hold.
    #[test]
    fn q18_hvmi_a_break_breaks_an_identity(
        sc in scenario(Just(Profile::Hvmi).boxed(), 0.1),
        t in 0u8..16,
    ) {
        let mut sc = sc;
        sc.terminal[0] = Some(Terminal { target: t });
        let w = run_scenario(&sc, |w| {
            let (h, _) = identity_failures(w);
            prop_assert!(h.is_empty(), "harness {:?}", h);
            Ok(())
        })?;
        let breaks = w.counters.vmcalls.get(&vesim::introcore::call::BREAK).copied().unwrap_or(0);
        prop_assert!(breaks >= 1, "no break happened");
        let (_, a) = identity_failures(&w);
        prop_assert!(
            a.iter().any(|f| f.starts_with("VeIgnoredTotal")),
            "VeIgnoredTotal holds after {} breaks (failures: {:?})",
            breaks,
            a
        );
    }
}

/// I5, harness side: "#VEs delivered by kind" must count every delivered #VE in a kind. A guest
/// that rewrites its 0x50 descriptor after deploy (a guest-controlled byte, I9) makes the agent
/// find CPU-map slot 0xFFFFFFFF and return at once (`fixed` Q20): the #VE must still be in a
/// kind (unknown: the agent never classified it), and the identities must hold. (The semaphore
/// stays set, so #VE is off on that VCPU from then on: the next write is an EPT-violation exit.)
#[test]
fn i5_every_delivered_ve_is_counted_in_a_kind() {
    let mut pw = PtWorld::new(Quirks::fixed(), 1);
    pw.monitor(false, &[0]);
    let write = GOp::Write {
        target: 0,
        how: How::MovR,
        pick: 2,
    };
    pw.load(0, &[write], None);
    pw.w.vcpus[0].seg50 = vesim::guest::seg50_for_cpu(5);
    for _ in 0..200 {
        if pw.done(0) {
            break;
        }
        pw.w.step(VcpuId(0)).unwrap();
    }
    assert!(pw.done(0));
    assert_eq!(pw.w.counters.ve_total, 1);
    let (harness, _) = identity_failures(&pw.w);
    assert!(harness.is_empty(), "{harness:?}");
}
