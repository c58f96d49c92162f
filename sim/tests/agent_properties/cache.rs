//! 5. Cache soundness (I7): no monitored entry is ever cached in `fixed`.

use crate::kit::{asm::*, props::*, pt_world::*};
use crate::CACHE_CASES;
use proptest::prelude::*;
use vesim::introcore::ptm::MonitorId;
use vesim::quirks::Quirks;
use vesim_model::VcpuId;

/// One step of a cache scenario.
#[derive(Clone, Copy, Debug)]
enum COp {
    /// Place a monitor on entry `index` of region `region`'s table.
    Place { region: u8, index: u16 },
    /// Remove the `k`-th live monitor, then commit.
    Remove { k: u8 },
    /// `IntVeUpdateCacheEntry(entry, FALSE)` for an entry with no monitor.
    Add { region: u8, index: u16 },
    /// `IntVeUpdateCacheEntry(entry, TRUE)`.
    Evict { region: u8, index: u16 },
    /// The guest executes one operation (relevant writes to unmonitored entries raise and
    /// cache entries, B75).
    Guest(GOp),
    /// `gVePendingUnload` set or cleared (Q16: `fixed` still evicts meanwhile).
    PendingUnload(bool),
}

fn entry_index() -> impl Strategy<Value = u16> {
    prop_oneof![4 => 0u16..16, 1 => 0u16..512]
}

fn cop() -> impl Strategy<Value = COp> {
    prop_oneof![
        3 => (0u8..2, entry_index()).prop_map(|(region, index)| COp::Place { region, index }),
        2 => any::<u8>().prop_map(|k| COp::Remove { k }),
        2 => (0u8..2, entry_index()).prop_map(|(region, index)| COp::Add { region, index }),
        1 => (0u8..2, entry_index()).prop_map(|(region, index)| COp::Evict { region, index }),
        5 => gop().prop_map(COp::Guest),
        1 => any::<bool>().prop_map(COp::PendingUnload),
    ]
}

proptest! {
    #![proptest_config(config(CACHE_CASES))]

    /// I7 in `fixed`: whatever the order of placements, removals, cache adds (by raises and by
    /// `update_cache`) and evictions, no monitored entry is in the agent cache, checked after
    /// every placement, every other operation and every step.
    #[test]
    fn i7_no_monitored_entry_is_cached(ops in prop::collection::vec(cop(), 1..48)) {
        let mut pw = PtWorld::new(Quirks::fixed(), 1);
        let mut live: Vec<MonitorId> = Vec::new();
        for (n, op) in ops.iter().enumerate() {
            let entry = |pw: &PtWorld, region: u8, index: u16| {
                pw.tables[usize::from(region % 2)].wrapping_add(u64::from(index % 512) * 8)
            };
            match *op {
                COp::Place { region, index } => {
                    let e = entry(&pw, region, index);
                    live.push(pw.w.engine().place_monitor(e));
                }
                COp::Remove { k } => {
                    if !live.is_empty() {
                        let id = live.remove(usize::from(k) % live.len());
                        pw.w.engine().remove_monitor(id);
                        pw.w.engine().commit_hooks();
                    }
                }
                COp::Add { region, index } => {
                    let e = entry(&pw, region, index);
                    if !pw.w.intro.ptm.is_monitored(e) {
                        pw.w.engine().update_cache(e, false);
                    }
                }
                COp::Evict { region, index } => {
                    let e = entry(&pw, region, index);
                    pw.w.engine().update_cache(e, true);
                }
                COp::PendingUnload(on) => pw.w.intro.pending_unload = on,
                COp::Guest(g) => {
                    pw.load(0, &[g], None);
                    for _ in 0..400 {
                        if pw.done(0) {
                            break;
                        }
                        let r = pw.w.step(VcpuId(0));
                        prop_assert!(r.is_ok(), "op {}: stopped: {:?}", n, r);
                        let bad = pw.w.intro.cached_monitored_entries(&pw.w.machine, &pw.w.guest);
                        prop_assert!(bad.is_empty(), "op {} {:?}: cached monitored entries {:?}", n, op, bad);
                    }
                    prop_assert!(pw.done(0), "op {}: {:?} did not finish", n, g);
                }
            }
            let bad = pw.w.intro.cached_monitored_entries(&pw.w.machine, &pw.w.guest);
            prop_assert!(bad.is_empty(), "after op {} {:?}: cached monitored entries {:?}", n, op, bad);
        }
    }
}
