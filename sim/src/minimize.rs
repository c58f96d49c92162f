//! Shrinking a failing scenario: drop guest operations (delta debugging over every VCPU's
//! queue, in order) while the same invariant still fails under the same seed and schedule.

use crate::check::{Checker, Invariant};
use crate::ops::{OpRunner, RunFailure};
use crate::quirks::Quirks;
use crate::sched::{Schedule, Scheduler};
use crate::workload::{build_world_quirks, Builtin, Scenario, STEPS_MAX};
use std::collections::BTreeMap;

/// Everything a checked run needs besides the scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    /// The built-in whose world is built.
    pub builtin: Builtin,
    /// Its parameters.
    pub params: BTreeMap<&'static str, u64>,
    /// Quirk switches.
    pub quirks: Quirks,
    /// Seed.
    pub seed: u64,
    /// VCPU schedule.
    pub schedule: Schedule,
}

/// Runs `sc` with #VE on and every check after every step; the first invariant that fails.
pub fn failing_invariant(setup: &Setup, sc: &Scenario) -> Option<Invariant> {
    let mut w =
        build_world_quirks(setup.builtin, &setup.params, true, setup.quirks, setup.seed).ok()?;
    if sc.queues.len() > w.vcpus.len() {
        return None;
    }
    for p in &sc.processes {
        w.create_process(*p).ok()?;
    }
    let mut queues = sc.queues.clone();
    queues.resize(w.vcpus.len(), Vec::new());
    let mut runner = OpRunner::new(queues);
    let mut sched = Scheduler::new(setup.schedule.clone(), w.vcpus.len());
    let mut checker = Checker::new(&w);
    match w.run_ops_checked(&mut runner, &mut sched, &mut checker, STEPS_MAX) {
        Err(RunFailure::Violations(v)) => v.first().map(|x| x.invariant),
        _ => None,
    }
}

/// The number of operations of a scenario.
pub fn op_count(sc: &Scenario) -> usize {
    sc.queues.iter().map(Vec::len).sum()
}

fn without(sc: &Scenario, drop: &[bool]) -> Scenario {
    let mut k = 0;
    let mut queues = Vec::with_capacity(sc.queues.len());
    for q in &sc.queues {
        let mut nq = Vec::with_capacity(q.len());
        for op in q {
            if !drop[k] {
                nq.push(*op);
            }
            k += 1;
        }
        queues.push(nq);
    }
    Scenario {
        processes: sc.processes.clone(),
        queues,
    }
}

/// Shrinks `sc` while `invariant` still fails: ddmin over all operations, then each single
/// operation again. Returns the smallest scenario found.
pub fn minimize(setup: &Setup, sc: &Scenario, invariant: Invariant) -> Scenario {
    let total = op_count(sc);
    let mut keep = vec![true; total];
    let live = |keep: &[bool]| keep.iter().filter(|k| **k).count();
    let fails = |keep: &[bool]| {
        let drop: Vec<bool> = keep.iter().map(|k| !k).collect();
        failing_invariant(setup, &without(sc, &drop)) == Some(invariant)
    };
    let mut n = 2usize;
    while live(&keep) >= 2 {
        let idx: Vec<usize> = (0..total).filter(|i| keep[*i]).collect();
        let chunk = idx.len().div_ceil(n);
        let mut reduced = false;
        for c in idx.chunks(chunk.max(1)) {
            let mut trial = keep.clone();
            for &i in c {
                trial[i] = false;
            }
            if fails(&trial) {
                keep = trial;
                n = (n - 1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if n >= idx.len() {
                break;
            }
            n = (n * 2).min(idx.len());
        }
    }
    // One more pass, one operation at a time.
    for i in 0..total {
        if keep[i] {
            let mut trial = keep.clone();
            trial[i] = false;
            if fails(&trial) {
                keep = trial;
            }
        }
    }
    let drop: Vec<bool> = keep.iter().map(|k| !k).collect();
    let mut out = without(sc, &drop);
    // Processes stay (their numbering is what operations refer to); empty queues at the end
    // of the VCPU list go.
    while out.queues.last().is_some_and(Vec::is_empty) && out.queues.len() > 1 {
        out.queues.pop();
    }
    out
}
