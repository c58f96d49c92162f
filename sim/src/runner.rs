//! Build a world for a seed, run a scenario in it with every check after every step, and say
//! how it ended, as a typed value. The one place this is done: `vesim check`, `vesim minimize`,
//! `vesim replay --check`, the quirk report and the `scenario` fuzz oracle all call it.
//!
//! How a run ends ([`Checked`]) keeps three kinds apart:
//!
//! - an invariant failure (I1–I10, [`Checked::Failed`]): the agent, introcore or the guest did
//!   something the specification forbids;
//! - a stop that no invariant covers ([`Checked::Stopped`]): the guest ended in an outcome the
//!   world does not handle (an instruction the reference CPU does not implement, a double
//!   fault, ...);
//! - a harness error ([`Checked::Harness`]): the world could not be built, the scenario does
//!   not fit it (a queue for a VCPU it does not have, a process that vanished), or a step bound
//!   of the harness ran out. Never reported as an agent fault or as I10.
//!
//! **When I6 applies** ([`i6_applies`]): VE-SEMANTICS section 4 compares the #VE-on and #VE-off
//! runs of a workload whose page-table writes the guest serializes. The guest's memory manager
//! serializes a process's writes when they all run on one VCPU, so I6 applies when no process
//! has operations on two VCPUs and no operation is an attack (an attack's remap moves agent
//! pages into frames the comparison cannot tell from guest memory).

use crate::check::{Checker, Invariant, Violation};
use crate::events::Stop;
use crate::ops::{GuestOp, OpRunner, RunFailure};
use crate::quirks::Quirks;
use crate::sched::{Schedule, Scheduler};
use crate::workload::{build_world_quirks, Builtin, Scenario, STEPS_MAX};
use crate::world::World;
use std::collections::{BTreeMap, BTreeSet};
use vesim_model::VcpuId;

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

/// How a checked run of a scenario ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    /// Every operation ended and every invariant held after every step (and I6, where it
    /// applies, after the run).
    Passed,
    /// The first failed invariant, with the step at which it failed.
    Failed(Violation),
    /// A VCPU stopped in a way no invariant covers: not a pass.
    Stopped {
        /// The VCPU.
        cpu: VcpuId,
        /// Why.
        stop: Stop,
    },
    /// The harness could not build or run the scenario: not a pass, and not a failure of
    /// what is simulated.
    Harness(String),
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checked::Passed => write!(f, "passes"),
            Checked::Failed(v) => write!(
                f,
                "{} fails at step {} on VCPU {}: {}",
                v.invariant, v.step, v.cpu, v.detail
            ),
            Checked::Stopped { cpu, stop } => write!(f, "VCPU {cpu}: {stop}"),
            Checked::Harness(e) => write!(f, "{e}"),
        }
    }
}

/// Whether I6 applies to `sc` (see the module documentation).
pub fn i6_applies(sc: &Scenario) -> bool {
    let mut owner: BTreeMap<u32, usize> = BTreeMap::new();
    for (cpu, q) in sc.queues.iter().enumerate() {
        if q.iter().any(|op| matches!(op, GuestOp::Attack { .. })) {
            return false;
        }
        let pids: BTreeSet<u32> = q.iter().filter_map(GuestOp::pid).collect();
        for pid in pids {
            if *owner.entry(pid).or_insert(cpu) != cpu {
                return false;
            }
        }
    }
    true
}

/// The world of `setup` with #VE on or off and the scenario's processes created.
pub fn world(setup: &Setup, sc: &Scenario, ve: bool) -> Result<World, String> {
    let mut w = build_world_quirks(setup.builtin, &setup.params, ve, setup.quirks, setup.seed)
        .map_err(|e| e.to_string())?;
    if sc.queues.len() > w.vcpus.len() {
        return Err(format!(
            "the scenario has queues for {} VCPUs but the machine has {}",
            sc.queues.len(),
            w.vcpus.len()
        ));
    }
    for p in &sc.processes {
        w.mm().create_process(*p).map_err(|e| e.to_string())?;
    }
    Ok(w)
}

/// How a run that stopped early ended: its first violation, or its stop.
pub fn checked_of(f: RunFailure) -> Checked {
    match f {
        RunFailure::Violations(v) => match v.into_iter().next() {
            Some(x) => Checked::Failed(x),
            None => Checked::Passed,
        },
        RunFailure::Stopped(cpu, Stop::Harness(e)) => Checked::Harness(format!("VCPU {cpu}: {e}")),
        RunFailure::Stopped(cpu, stop) => Checked::Stopped {
            cpu: VcpuId(cpu),
            stop,
        },
    }
}

/// What a checked run did besides how it ended.
#[derive(Clone, Debug)]
pub struct Run {
    /// How it ended.
    pub checked: Checked,
    /// The (VCPU, steps) runs the scheduler made.
    pub runs: Vec<(usize, u64)>,
    /// Scheduling steps taken.
    pub steps: u64,
}

/// Runs `sc` in the world `w` (built with #VE on and the scenario's processes) under
/// `schedule` with every check after every step, at most `steps_max` steps (a run the bound
/// ends passes as far as it went). When the run passes and I6 applies, `off` (if given) builds
/// the #VE-off world of the same setup and the two are compared.
pub fn run_world(
    w: &mut World,
    sc: &Scenario,
    schedule: &Schedule,
    steps_max: u64,
    off: Option<&mut dyn FnMut() -> Result<World, String>>,
) -> Run {
    let mut queues = sc.queues.clone();
    queues.resize(w.vcpus.len(), Vec::new());
    let mut runner = OpRunner::new(queues);
    let mut sched = Scheduler::new(schedule.clone(), w.vcpus.len()).recording();
    let mut checker = Checker::new(w);
    let ran = runner.run_checked(w, &mut sched, &mut checker, steps_max);
    let steps = match &ran {
        Ok(n) => (*n).max(checker.steps()),
        Err(_) => checker.steps(),
    };
    let mut checked = match ran {
        Ok(_) => Checked::Passed,
        Err(f) => checked_of(f),
    };
    if let (Checked::Passed, true, Some(off)) = (&checked, i6_applies(sc), off) {
        checked = match off() {
            Err(e) => Checked::Harness(e),
            Ok(mut off) => {
                match crate::equivalence::compare(w, &mut off, sc.queues.clone(), &runner.log) {
                    Some(detail) => Checked::Failed(Violation {
                        invariant: Invariant::I6,
                        step: steps,
                        cpu: VcpuId(0),
                        detail,
                    }),
                    None => Checked::Passed,
                }
            }
        };
    }
    Run {
        checked,
        runs: sched.runs(),
        steps,
    }
}

/// Builds the world of `setup` and runs `sc` in it ([`run_world`]).
pub fn run(setup: &Setup, sc: &Scenario) -> Run {
    match world(setup, sc, true) {
        Ok(mut w) => run_world(
            &mut w,
            sc,
            &setup.schedule,
            STEPS_MAX,
            Some(&mut || world(setup, sc, false)),
        ),
        Err(e) => Run {
            checked: Checked::Harness(e),
            runs: Vec::new(),
            steps: 0,
        },
    }
}

/// How a checked run of `sc` under `setup` ended ([`run`]).
pub fn checked(setup: &Setup, sc: &Scenario) -> Checked {
    run(setup, sc).checked
}

/// The first invariant that fails in a checked run of `sc`, with the (VCPU, steps) runs the
/// scheduler made.
pub fn checked_run(setup: &Setup, sc: &Scenario) -> Option<(Invariant, Vec<(usize, u64)>)> {
    let r = run(setup, sc);
    match r.checked {
        Checked::Failed(v) => Some((v.invariant, r.runs)),
        _ => None,
    }
}

/// The first invariant that fails in a checked run of `sc`.
pub fn failing_invariant(setup: &Setup, sc: &Scenario) -> Option<Invariant> {
    checked_run(setup, sc).map(|(i, _)| i)
}
