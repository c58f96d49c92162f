//! Snapshot and reset: a world reset to its snapshot equals a freshly built one, field by field,
//! and runs on to the same result and trace hash as the fresh one (every built-in, both
//! profiles, #VE on and off, several seeds). The oracle is a world built from scratch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use vesim::quirks::Profile;
use vesim::sched::Schedule;
use vesim::workload::{build_world_quirks, resolve_params, run_in_world, Builtin};
use vesim::world::SnapshotError;

#[test]
fn a_reset_world_equals_a_fresh_one_and_runs_the_same() {
    for (name, b) in Builtin::ALL {
        let params = resolve_params(b, &BTreeMap::new()).unwrap();
        for profile in [Profile::Fixed, Profile::Hvmi] {
            for ve in [true, false] {
                for seed in 0..2 {
                    let case = format!("{name} {profile:?} ve={ve} seed={seed}");
                    let sched = Schedule::Random { seed };
                    let build = || build_world_quirks(b, &params, ve, profile.quirks(), seed);
                    let fresh = build().unwrap();
                    let (want, want_stop, _) =
                        run_in_world(b, &params, fresh.clone(), seed, &sched, None).unwrap();
                    let mut w = build().unwrap();
                    let snap = w.snapshot();
                    assert_eq!(w.differences(&fresh), Vec::<&str>::new(), "{case}");
                    for round in 0..2 {
                        let (got, stop, mut after) =
                            run_in_world(b, &params, w, seed, &sched, None)
                                .unwrap_or_else(|e| panic!("{case} round {round}: {e}"));
                        assert_eq!(got, want, "{case} round {round}: the run repeats");
                        assert_eq!(stop, want_stop, "{case} round {round}: the same stop");
                        assert!(
                            after.machine.mem.dirtied_since_mark() > 0,
                            "{case}: the run wrote guest memory"
                        );
                        assert_ne!(
                            after.differences(&fresh),
                            Vec::<&str>::new(),
                            "{case}: a run changes the world (the comparison sees it)"
                        );
                        after.reset(&snap).unwrap();
                        assert_eq!(
                            after.differences(&fresh),
                            Vec::<&str>::new(),
                            "{case} round {round}: the reset world differs from a fresh one"
                        );
                        assert_eq!(after.machine.mem.dirtied_since_mark(), 0);
                        w = after;
                    }
                }
            }
        }
    }
}

#[test]
fn a_snapshot_older_than_the_last_is_refused() {
    let params = resolve_params(Builtin::DesktopMix, &BTreeMap::new()).unwrap();
    let mut w = build_world_quirks(
        Builtin::DesktopMix,
        &params,
        true,
        Profile::Fixed.quirks(),
        0,
    )
    .unwrap();
    let old = w.snapshot();
    let new = w.snapshot();
    assert_eq!(
        w.reset(&old),
        Err(SnapshotError::Stale {
            snapshot: 1,
            world: 2
        })
    );
    assert_eq!(w.reset(&new), Ok(()));
}
