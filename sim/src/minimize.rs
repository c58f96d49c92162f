//! Shrinking a failing scenario while the same invariant still fails under the same seed:
//!
//! 1. guest operations (delta debugging over every VCPU's queue, in order), under the
//!    scenario's schedule;
//! 2. whole VCPUs (a VCPU's queue goes and the VCPUs after it are renumbered), for built-ins
//!    whose VCPU count is a parameter;
//! 3. schedule preemptions: the schedule becomes the explicit list of (VCPU, steps) runs the
//!    failing run took, and runs are dropped (delta debugging again); each run dropped is a
//!    context switch fewer;
//! 4. operations once more, under the new schedule.

use crate::check::Invariant;
use crate::runner::{checked_run, failing_invariant, Setup};
use crate::sched::Schedule;
use crate::workload::Scenario;
use vesim_model::VcpuId;

/// The number of operations of a scenario.
pub fn op_count(sc: &Scenario) -> usize {
    sc.queues.iter().map(Vec::len).sum()
}

/// The context switches of a schedule: runs of an explicit list after the first; `None` for
/// the schedules that are not lists.
pub fn preemptions(s: &Schedule) -> Option<usize> {
    match s {
        Schedule::List(runs) => Some(runs.len().saturating_sub(1)),
        _ => None,
    }
}

fn without(sc: &Scenario, keep: &[bool]) -> Scenario {
    let mut k = 0;
    let mut queues = Vec::with_capacity(sc.queues.len());
    for q in &sc.queues {
        let mut nq = Vec::with_capacity(q.len());
        for op in q {
            if keep.get(k).copied().unwrap_or(true) {
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

/// Delta debugging over `total` items: the smallest keep-mask found for which `fails` holds
/// (ddmin, then each remaining item once more).
fn ddmin(total: usize, fails: impl Fn(&[bool]) -> bool) -> Vec<bool> {
    let mut keep = vec![true; total];
    let live = |keep: &[bool]| keep.iter().filter(|k| **k).count();
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
    for i in 0..total {
        if keep[i] {
            let mut trial = keep.clone();
            trial[i] = false;
            if fails(&trial) {
                keep = trial;
            }
        }
    }
    keep
}

fn shrink_ops(
    setup: &Setup,
    sc: &Scenario,
    still: &impl Fn(&Setup, &Scenario) -> bool,
) -> Scenario {
    let keep = ddmin(op_count(sc), |keep| still(setup, &without(sc, keep)));
    without(sc, &keep)
}

/// `sc` without VCPU `cpu`'s queue, the VCPUs after it renumbered, and `setup` with one VCPU
/// fewer (its explicit schedule renumbered the same way).
fn without_vcpu(setup: &Setup, sc: &Scenario, cpu: VcpuId) -> Option<(Setup, Scenario)> {
    let vcpus = *setup.params.get("vcpus")?;
    if vcpus <= 1 || cpu.0 as u64 >= vcpus {
        return None;
    }
    let mut s = setup.clone();
    s.params.insert("vcpus", vcpus - 1);
    if let Schedule::List(runs) = &setup.schedule {
        s.schedule = Schedule::List(coalesce(
            runs.iter()
                .filter(|(c, _)| *c != cpu.0)
                .map(|&(c, n)| (if c > cpu.0 { c - 1 } else { c }, n)),
        ));
    }
    let mut out = sc.clone();
    if cpu.0 < out.queues.len() {
        out.queues.remove(cpu.0);
    }
    Some((s, out))
}

fn coalesce(runs: impl Iterator<Item = (usize, u64)>) -> Vec<(usize, u64)> {
    let mut out: Vec<(usize, u64)> = Vec::new();
    for (c, n) in runs {
        match out.last_mut() {
            Some((l, m)) if *l == c => *m += n,
            _ => out.push((c, n)),
        }
    }
    out
}

/// As few of `runs` as still fail under `setup`: delta debugging over the runs, then swaps
/// that keep every VCPU's steps (a run moved after the next run of the VCPU before it merges
/// two runs of that VCPU).
fn shrink_runs(
    setup: &Setup,
    sc: &Scenario,
    runs: Vec<(usize, u64)>,
    still: &impl Fn(&Setup, &Scenario) -> bool,
) -> Vec<(usize, u64)> {
    let with = |r: Vec<(usize, u64)>| Setup {
        schedule: Schedule::List(r),
        ..setup.clone()
    };
    let keep = ddmin(runs.len(), |keep| {
        let r = coalesce(runs.iter().zip(keep).filter(|(_, k)| **k).map(|(r, _)| *r));
        still(&with(r), sc)
    });
    let mut runs = coalesce(runs.iter().zip(&keep).filter(|(_, k)| **k).map(|(r, _)| *r));
    let mut i = 0;
    while i + 2 < runs.len() {
        let mut trial = runs.clone();
        trial.swap(i + 1, i + 2);
        let trial = coalesce(trial.into_iter());
        if trial.len() < runs.len() && still(&with(trial.clone()), sc) {
            runs = trial;
            i = i.saturating_sub(1);
        } else {
            i += 1;
        }
    }
    runs
}

/// The result of [`minimize`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Minimized {
    /// The context switches of the failing run before shrinking.
    pub preemptions_before: usize,
    /// The set-up it fails under (fewer VCPUs, an explicit schedule).
    pub setup: Setup,
    /// The scenario.
    pub scenario: Scenario,
}

/// Shrinks `sc` under `setup` while `invariant` still fails: operations, VCPUs, schedule
/// preemptions, operations again. Returns the smallest failing set-up and scenario found.
pub fn minimize(setup: &Setup, sc: &Scenario, invariant: Invariant) -> Minimized {
    minimize_while(setup, sc, &|s: &Setup, sc: &Scenario| {
        failing_invariant(s, sc) == Some(invariant)
    })
}

/// [`minimize`] for any property `still` of a failing run (it must hold for `setup` and
/// `sc`): the smallest set-up and scenario found for which it still holds.
pub fn minimize_while(
    setup: &Setup,
    sc: &Scenario,
    still: &impl Fn(&Setup, &Scenario) -> bool,
) -> Minimized {
    let preemptions_before = checked_run(setup, sc).map_or(0, |(_, r)| r.len().saturating_sub(1));
    let mut sc = shrink_ops(setup, sc, still);
    let mut setup = setup.clone();
    // VCPUs, highest first so that the numbers of those still to try stay valid.
    let vcpus = setup.params.get("vcpus").copied().unwrap_or(1) as usize;
    for cpu in (0..vcpus).rev() {
        if let Some((s, smaller)) = without_vcpu(&setup, &sc, VcpuId(cpu)) {
            if still(&s, &smaller) {
                (setup, sc) = (s, smaller);
            }
        }
    }
    // The schedule: the runs the failing run took, then as few of them as still fail. A list
    // that ends before the failure continues round-robin, which switches at every step, so
    // the shrunk list is recorded again in full and shrunk again until it covers the run.
    for _ in 0..4 {
        let Some((_, runs)) = checked_run(&setup, &sc) else {
            break;
        };
        let mut exact = setup.clone();
        exact.schedule = Schedule::List(runs.clone());
        if !still(&exact, &sc) {
            break;
        }
        let shrunk = shrink_runs(&setup, &sc, runs.clone(), still);
        setup = exact;
        if shrunk == runs {
            break;
        }
        setup.schedule = Schedule::List(shrunk);
        sc = shrink_ops(&setup, &sc, still);
    }
    // Processes stay (their numbering is what operations refer to); empty queues at the end
    // of the VCPU list go.
    while sc.queues.last().is_some_and(Vec::is_empty) && sc.queues.len() > 1 {
        sc.queues.pop();
    }
    // One VCPU needs no schedule list.
    if setup.params.get("vcpus").copied().unwrap_or(1) == 1 {
        let rr = Setup {
            schedule: Schedule::RoundRobin,
            ..setup.clone()
        };
        if still(&rr, &sc) {
            setup = rr;
        }
    }
    Minimized {
        preemptions_before,
        setup,
        scenario: sc,
    }
}
