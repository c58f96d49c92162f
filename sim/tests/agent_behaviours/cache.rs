//! B70–B76: the VE cache.

use crate::fx;
use crate::kit::{cache::*, events::*, spec::*, ve::*, worlds::*};
use vesim::agent::AgentOutcome;
use vesim::layout;
use vesim::quirks::Quirks;
use vesim::world::World;
use vesim_model::Gpa;

/// B70: 64 lines × 64 buckets × 8 slots; line = (GPA >> 12) & 63, bucket = (GPA >> 3) & 63,
/// keyed by the entry's GPA.
#[test]
fn b70_cache_geometry() {
    assert_eq!(
        layout::AGENT_SIZE - layout::AGENT_VECACHE,
        64 * 0x1000,
        "64 pages"
    );
    let mut w = World::new(config(Quirks::fixed())).unwrap();
    let e = Gpa(0x0123_4568); // line 0x34, bucket 0xAD & 63 = 0x2D
    w.engine().update_cache(e, false);
    w.engine().update_cache(e.wrapping_add(0x200), false); // 64 entries on: same bucket
    w.engine().update_cache(e.wrapping_add(0x4_0000), false); // 64 pages on: same line and bucket
    w.engine().update_cache(e.wrapping_add(0x1000), false); // next line
    assert_eq!(mem(&w, cache_slot(0x34, 0x2D, 0)), e.0);
    assert_eq!(mem(&w, cache_slot(0x34, 0x2D, 1)), e.0 + 0x200);
    assert_eq!(mem(&w, cache_slot(0x34, 0x2D, 2)), e.0 + 0x4_0000);
    assert_eq!(mem(&w, cache_slot(0x35, 0x2D, 0)), e.0 + 0x1000);
}

/// B71: the agent scans all 8 slots of the entry's bucket for an exact match.
#[test]
fn b71_lookup_scans_the_eight_slots_of_the_bucket() {
    let mut f = fx(Quirks::fixed());
    let e1 = f.e(1);
    let (line, bucket) = ((e1.0 >> 12) & 63, (e1.0 >> 3) & 63);
    f.w.machine.mem.write_u64(cache_slot(line, bucket, 7), e1.0);
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(outcomes(&f.w), [(AgentOutcome::IgnoredCache, None)]);
    // In the neighbouring bucket it does not count.
    let mut f = fx(Quirks::fixed());
    f.w.machine
        .mem
        .write_u64(cache_slot(line, (bucket + 1) % 64, 0), e1.0);
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(outcomes(&f.w), [(AgentOutcome::Raised, None)]);
}

/// B72: updates do nothing unless the agent is deployed; adds do nothing once unload is pending.
#[test]
fn b72_updates_only_while_deployed() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut w = World::new(config(q)).unwrap();
        let e = Gpa(0x0123_4568);
        w.intro.deployed = false;
        w.engine().update_cache(e, false);
        assert!(!w.intro.cache_contains(&w.machine, &w.guest, e));
        w.intro.deployed = true;
        w.intro.pending_unload = true;
        w.engine().update_cache(e, false);
        assert!(!w.intro.cache_contains(&w.machine, &w.guest, e));
        w.intro.pending_unload = false;
        w.engine().update_cache(e, false);
        assert!(w.intro.cache_contains(&w.machine, &w.guest, e));
    }
}

/// B73: a removal empties the first slot equal to the address only.
#[test]
fn b73_remove_first_match_only() {
    for (q, empty) in [(Quirks::fixed(), u64::MAX), (Quirks::hvmi(), 0)] {
        let mut w = World::new(config(q)).unwrap();
        let e = Gpa(0x0123_4568);
        w.machine.mem.write_u64(cache_slot(0x34, 0x2D, 2), e.0);
        w.machine.mem.write_u64(cache_slot(0x34, 0x2D, 5), e.0);
        w.engine().update_cache(e, true);
        assert_eq!(mem(&w, cache_slot(0x34, 0x2D, 2)), empty);
        assert_eq!(mem(&w, cache_slot(0x34, 0x2D, 5)), e.0);
        assert!(w.intro.cache_contains(&w.machine, &w.guest, e));
    }
}

/// B74: an add does nothing if present; else slot = the bucket's fill counter while below 8,
/// then a random slot.
#[test]
fn b74_counter_then_random() {
    for q in [Quirks::fixed(), Quirks::hvmi()] {
        let mut w = World::new(config(q)).unwrap();
        let e = |k: u64| Gpa(0x0123_4568 + (k << 18)); // same line and bucket
        for k in 0..8 {
            w.engine().update_cache(e(k), false);
        }
        for k in 0..8 {
            assert_eq!(mem(&w, cache_slot(0x34, 0x2D, k)), e(k).0, "slot {k}");
        }
        w.engine().update_cache(e(3), false);
        assert_eq!(w.intro.cache.stats.inserts, 8, "already present");
        w.engine().update_cache(e(8), false);
        assert_eq!(w.intro.cache.stats.random_replacements, 1);
        assert!(w.intro.cache_contains(&w.machine, &w.guest, e(8)));
        assert_eq!(
            (0..8)
                .filter(|k| w.intro.cache_contains(&w.machine, &w.guest, e(*k)))
                .count(),
            7
        );
    }
}

/// B75: a raise on an unmonitored entry adds it and the next 7 entries whose own list is
/// empty, never past entry 511; no callback runs.
#[test]
fn b75_adds_entry_and_next_seven_unmonitored() {
    let mut f = fx(Quirks::fixed());
    let e3 = f.e(3);
    f.w.engine().place_monitor(e3);
    f.w.engine().commit_hooks();
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    for k in 0..10 {
        let want = matches!(k, 1 | 2 | 4 | 5 | 6 | 7 | 8);
        assert_eq!(
            f.w.intro.cache_contains(&f.w.machine, &f.w.guest, f.e(k)),
            want,
            "entry {k}"
        );
    }
    assert!(callbacks(&f.w).is_empty());
    f.mov_entry(0, 2, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(outcomes(&f.w)[1], (AgentOutcome::IgnoredCache, None));
    f.mov_entry(0, 510, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(vmcalls(&f.w).len(), 2);
    assert!(
        f.w.intro.cache_contains(&f.w.machine, &f.w.guest, f.e(510))
            && f.w.intro.cache_contains(&f.w.machine, &f.w.guest, f.e(511))
    );
    assert!(!f.w.intro.cache_contains(&f.w.machine, &f.w.guest, f.e(509)));
    assert!(
        !f.w.intro.cache_contains(&f.w.machine, &f.w.guest, f.e(512)),
        "not past the table"
    );
}

/// B76: the first monitor on an entry evicts it; removing the last one does not re-add it, so
/// relevant writes raise until a raise caches it again.
#[test]
fn b76_first_monitor_evicts() {
    let mut f = fx(Quirks::fixed());
    let e1 = f.e(1);
    f.w.engine().update_cache(e1, false);
    assert!(f.w.intro.cache_contains(&f.w.machine, &f.w.guest, e1));
    let m = f.w.engine().place_monitor(e1);
    f.w.engine().commit_hooks();
    assert!(!f.w.intro.cache_contains(&f.w.machine, &f.w.guest, e1));
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(callbacks(&f.w), [(e1, 0, OLD)]);
    f.w.engine().remove_monitor(m);
    f.w.engine().commit_hooks();
    assert!(!f.w.intro.cache_contains(&f.w.machine, &f.w.guest, e1));
    f.mov_entry(0, 1, OLD ^ RW);
    one_ve(&mut f.w, 0);
    assert_eq!(vmcalls(&f.w).len(), 2, "raised again");
    assert!(f.w.intro.cache_contains(&f.w.machine, &f.w.guest, e1));
    f.mov_entry(0, 1, OLD);
    one_ve(&mut f.w, 0);
    assert_eq!(outcomes(&f.w)[2], (AgentOutcome::IgnoredCache, None));
    assert_eq!(callbacks(&f.w).len(), 1);
}
