//! The search for a world in which `fixed` plus one switch fails an invariant while `fixed`
//! passes, and the shrinking of what it finds.

use super::*;
use crate::check::Invariant;
use crate::minimize::minimize_while;
use crate::quirks::Quirks;
use crate::runner::{checked, Checked, Setup};
use crate::sched::Schedule;
use crate::workload::{generate, swarm_params, Builtin, Scenario};
use std::collections::BTreeMap;

/// A world in which the switch fails an invariant and `fixed` passes.
#[derive(Clone, Debug)]
pub struct Finding {
    /// Where it was found (a directed scenario's name, or `builtin seed N`).
    pub origin: String,
    /// The set-up, with the switch on.
    pub setup: Setup,
    /// The operations.
    pub scenario: Scenario,
    /// The invariant.
    pub invariant: Invariant,
    /// The step it failed at.
    pub step: u64,
    /// What the check saw.
    pub detail: String,
    /// The switch that was on with it, for a quirk whose effect HVMI-BEHAVIOURS describes
    /// through another's (Q4 and Q18 act through Q1's breaks).
    pub companion: Option<&'static str>,
}

/// `s` with every quirk off.
pub(super) fn fixed_of(s: &Setup) -> Setup {
    Setup {
        quirks: Quirks::fixed(),
        ..s.clone()
    }
}

/// The invariant `sc` fails under `s` (switch `q` on, and its companion if any) while
/// `fixed` passes it; with a companion, the companion alone must not fail that invariant (it
/// passes, or fails another one).
pub(super) fn breaks(
    s: &Setup,
    sc: &Scenario,
    q: &str,
    companion: Option<&str>,
) -> Option<crate::check::Violation> {
    let Checked::Failed(v) = checked(s, sc) else {
        return None;
    };
    if checked(&fixed_of(s), sc) != Checked::Passed {
        return None;
    }
    if companion.is_some() {
        let mut alone = s.clone();
        if let Some(b) = alone.quirks.switch_mut(q) {
            *b = false;
        }
        if matches!(checked(&alone, sc), Checked::Failed(x) if x.invariant == v.invariant) {
            return None;
        }
    }
    Some(v)
}

pub(super) fn with_switch(mut s: Setup, q: &str) -> Setup {
    if let Some(b) = s.quirks.switch_mut(q) {
        *b = true;
    }
    s
}

/// Searches for a world in which switch `q` (with `companion` on too, if given) breaks an
/// invariant `fixed` keeps.
pub fn search(q: &str, companion: Option<&'static str>) -> Option<Finding> {
    let on = |s: Setup| match companion {
        Some(c) => with_switch(with_switch(s, c), q),
        None => with_switch(s, q),
    };
    let found = |origin: String, s: Setup, sc: Scenario| {
        breaks(&s, &sc, q, companion).map(|v| Finding {
            origin,
            setup: s,
            scenario: sc,
            invariant: v.invariant,
            step: v.step,
            detail: v.detail,
            companion,
        })
    };
    for d in directed() {
        if let Some(f) = found(d.name.to_string(), on(d.setup), d.scenario) {
            return Some(f);
        }
    }
    for seed in 0..SWARM_SEEDS {
        for (name, b) in Builtin::ALL {
            let Ok(params) = swarm_params(b, &BTreeMap::new(), seed) else {
                continue;
            };
            let sc = generate(b, &params, seed);
            let s = on(Setup {
                builtin: b,
                params,
                quirks: Quirks::fixed(),
                seed,
                schedule: Schedule::Random { seed },
            });
            if let Some(f) = found(format!("{name} seed {seed}"), s, sc) {
                return Some(f);
            }
        }
    }
    for i in 0..FUZZ_CASES {
        let (s, sc) = fuzz_case(i);
        if let Some(f) = found(format!("scenario fuzz input {i}"), on(s), sc) {
            return Some(f);
        }
    }
    None
}

/// `f` shrunk while the same invariant fails with the switch and `fixed` passes.
pub fn shrink(f: &Finding, q: &str) -> Finding {
    let inv = f.invariant;
    let still = |s: &Setup, sc: &Scenario| {
        breaks(s, sc, q, f.companion).is_some_and(|v| v.invariant == inv)
    };
    let m = minimize_while(&f.setup, &f.scenario, &still);
    match breaks(&m.setup, &m.scenario, q, f.companion) {
        Some(v) if v.invariant == inv => Finding {
            origin: f.origin.clone(),
            setup: m.setup,
            scenario: m.scenario,
            invariant: inv,
            step: v.step,
            detail: v.detail,
            companion: f.companion,
        },
        _ => f.clone(),
    }
}
