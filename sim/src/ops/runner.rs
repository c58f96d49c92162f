//! Running per-VCPU queues of guest operations interleaved by a scheduler, one
//! hardware-visible step at a time: a guest instruction (with its walk and access), one agent
//! step, or one introcore handler (which runs atomically inside the step that exits).
//!
//! An operation becomes a [`Plan`] when its VCPU starts it, so it sees the page tables as they
//! are then (another VCPU may have changed them since the operation was queued).

use super::{GuestOp, OpEnd, OpStream};
use crate::attack::Probe;
use crate::guest::mm::{MmError, Plan};
use crate::introcore::pts::Owner;
use crate::sched::Scheduler;
use crate::world::{HarnessError, Stop, World};
use std::collections::VecDeque;
use vesim_model::vcpu::Gpr;
use vesim_model::VcpuId;

/// A VCPU's operation in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Active {
    op: GuestOp,
    plan: Plan,
    /// For an attack, what it must not achieve.
    probe: Option<Probe>,
    /// For an unload, where it is.
    unload: Option<UnloadPhase>,
    /// Index of the next instruction to load.
    next: usize,
    /// Whether the loaded instruction has had its first step (an attack's probe is armed
    /// then).
    armed: bool,
    /// RIP at which the instruction in flight is complete.
    end: Option<u64>,
}

/// The phases of an unload in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnloadPhase {
    /// Requested (pending); this many steps before the unloader lands.
    Waiting(u32),
    /// The unloader is in (B96) and asks for the unhook until the gate opens.
    Gate,
}

/// Per-VCPU queues of operations and their progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpRunner {
    queues: Vec<OpStream>,
    active: Vec<Option<Active>>,
    /// How each operation ended, in completion order: (VCPU, operation, end). Kept only while
    /// [`OpRunner::record`] is on.
    pub ended: Vec<(usize, GuestOp, OpEnd)>,
    /// Attacks that achieved what they tried (I3 breaches): (VCPU, operation, what).
    pub breaches: Vec<(usize, GuestOp, String)>,
    /// The schedule of guest operations: the VCPU of every operation start, instruction
    /// completion and abnormal end, in order ([`OpRunner::op_step`]). Kept only while
    /// [`OpRunner::record`] is on.
    pub log: Vec<usize>,
    /// Whether `ended` and `log` are kept (on by default; a long unchecked run turns it off so
    /// that its memory does not grow with its length).
    pub record: bool,
    /// Operations started so far.
    pub started: u64,
}

impl OpRunner {
    /// Queues for `vcpus` VCPUs.
    pub fn new(queues: Vec<Vec<GuestOp>>) -> Self {
        Self::from_streams(queues.into_iter().map(OpStream::from).collect())
    }

    /// Queues for `vcpus` VCPUs, as streams.
    pub fn from_streams(queues: Vec<OpStream>) -> Self {
        let n = queues.len();
        OpRunner {
            queues,
            active: vec![None; n],
            ended: Vec::new(),
            breaches: Vec::new(),
            log: Vec::new(),
            record: true,
            started: 0,
        }
    }

    /// Operations not yet started, over every VCPU.
    pub fn remaining(&self) -> u64 {
        self.queues.iter().map(OpStream::remaining).sum()
    }

    fn note(&mut self, cpu: VcpuId) {
        if self.record {
            self.log.push(cpu.0);
        }
    }

    fn end(&mut self, cpu: VcpuId, op: GuestOp, end: OpEnd) {
        if self.record {
            self.ended.push((cpu.0, op, end));
        }
    }

    /// Whether VCPU `cpu` has work left.
    pub fn busy(&self, cpu: VcpuId) -> bool {
        self.active.get(cpu.0).is_some_and(Option::is_some)
            || self.queues.get(cpu.0).is_some_and(|q| !q.is_empty())
    }

    /// The VCPUs with work left, ascending.
    pub fn runnable(&self, world: &World) -> Vec<usize> {
        let mut v = Vec::new();
        self.runnable_into(world, &mut v);
        v
    }

    /// [`OpRunner::runnable`] into a reused buffer (the per-step path).
    pub fn runnable_into(&self, world: &World, out: &mut Vec<usize>) {
        out.clear();
        out.extend((0..self.queues.len()).filter(|c| {
            *c < world.vcpus.len()
                && self.busy(VcpuId(*c))
                && world.stopped.get(*c).is_some_and(Option::is_none)
        }));
    }
}

/// Running the queues on a world.
impl OpRunner {
    /// The plan of VCPU `cpu`'s operation, made now, with an attack's probe; `None` for
    /// operations that are instant world actions (process creation, hooks, a CPU index),
    /// which are applied here.
    pub fn start_op(
        w: &mut World,
        cpu: VcpuId,
        op: GuestOp,
    ) -> Result<Option<(Plan, Option<Probe>)>, MmError> {
        if let GuestOp::Attack {
            pid,
            attack,
            arg,
            value,
        } = op
        {
            return Ok(crate::attack::plan_attack(w, cpu, pid, attack, arg, value)?
                .map(|(p, probe)| (p, Some(probe))));
        }
        Ok(match op {
            GuestOp::CreateProcess { protected } => {
                w.mm().create_process(protected)?;
                None
            }
            GuestOp::Hook { pid, va } => {
                let cr3 = w
                    .guest
                    .processes
                    .get(pid as usize)
                    .filter(|p| !p.exited)
                    .map(|p| p.cr3)
                    .ok_or(MmError::NoProcess(pid))?;
                w.engine().hook_translation(cr3, va, Owner::Process(pid));
                w.engine().commit_hooks();
                None
            }
            GuestOp::Attack { .. } | GuestOp::Unload { .. } => None,
            GuestOp::Redeploy => {
                w.engine().redeploy_agent().map_err(MmError::Refused)?;
                None
            }
            GuestOp::Map { pid, va, flags } => Some(w.mm().plan_map(pid, va, flags)?),
            GuestOp::Unmap { pid, va } => Some(w.mm().plan_unmap(pid, va)?),
            GuestOp::Protect {
                pid,
                va,
                writable,
                executable,
            } => Some(w.mm().plan_protect(pid, va, writable, executable)?),
            GuestOp::SetCaching {
                pid,
                va,
                attrs,
                form,
            } => Some(w.mm().plan_set_caching(pid, va, attrs, form)?),
            GuestOp::Trim { pid, va } => Some(w.mm().plan_trim(pid, va)?),
            GuestOp::Write {
                pid,
                va,
                level,
                insn,
                arg,
            } => Some(w.mm().plan_write_entry(pid, va, level, insn, arg)?),
            GuestOp::MoveTable { pid, va, frame } => Some(w.mm().plan_move_table(pid, va, frame)?),
            GuestOp::SwapOut { pid, va } => Some(w.mm().plan_swap_out(pid, va)?),
            GuestOp::SwapIn { pid, va } => Some(w.mm().plan_swap_in(pid, va)?),
            GuestOp::Touch {
                pid,
                va,
                write,
                value,
            } => Some(w.mm().plan_touch(pid, va, write, value)?),
        }
        .map(|p| (p, None)))
    }

    /// Loads the next instruction of `active` into VCPU `cpu` (RIP, CR3, RDI, RSI, RAX), so
    /// that the VCPU sits at it until it is scheduled. `false` when none is left.
    fn load_micro(w: &mut World, cpu: VcpuId, active: &mut Active) -> Result<bool, Stop> {
        let Some(m) = active.plan.micros.get(active.next).copied() else {
            return Ok(false);
        };
        let Some(cr3) = w
            .guest
            .processes
            .get(active.plan.pid as usize)
            .map(|p| p.cr3)
        else {
            return Err(Stop::Harness(HarnessError::ProcessVanished(
                active.plan.pid,
            )));
        };
        let (off, bytes) = m.instr();
        let start = crate::layout::MM_CODE_GVA + off;
        let Some(v) = w.vcpus.get_mut(cpu.0) else {
            return Err(Stop::Harness(HarnessError::NoVcpu(cpu.0)));
        };
        v.cr3 = cr3;
        v.rip = start;
        v.set_reg(Gpr::Rdi, m.rdi);
        v.set_reg(Gpr::Rsi, m.rsi);
        v.set_reg(Gpr::Rax, m.rax);
        if crate::guest::mm::is_pt_write(off) {
            w.counters.pt_writes += 1;
        }
        active.end = Some(start + bytes.len() as u64);
        active.armed = false;
        active.next += 1;
        Ok(true)
    }

    /// Ends `cpu`'s operation in flight normally: the memory manager's bookkeeping, then an
    /// attack's probe.
    fn finish_active(&mut self, w: &mut World, cpu: VcpuId) {
        if let Some(a) = self.active.get_mut(cpu.0).and_then(Option::take) {
            w.mm().finish_plan(a.plan.pid, a.plan.finish);
            if let Some(what) = a
                .probe
                .and_then(|p| crate::attack::attack_breach(w, cpu, p))
            {
                self.breaches.push((cpu.0, a.op, what));
            }
            self.end(cpu, a.op, OpEnd::Done);
        }
    }

    /// One scheduling step of VCPU `cpu` in `self`: start its next operation (planning
    /// reads the page tables as they are now; no instruction runs in that step), or run one
    /// hardware-visible step of the instruction it sits at. Once an operation starts and each
    /// time one of its instructions completes, the VCPU is placed at the next instruction, so
    /// every check sees the RIP the next step executes at.
    ///
    /// Every call that starts an operation, completes one of its instructions or ends it
    /// abnormally appends `cpu` to [`OpRunner::log`]: the schedule of guest operations that I6
    /// replays in the #VE-off world.
    pub fn op_step(&mut self, w: &mut World, cpu: VcpuId) -> Result<(), Stop> {
        if cpu.0 >= w.vcpus.len() || cpu.0 >= self.active.len() {
            return Err(Stop::Harness(HarnessError::NoVcpu(cpu.0)));
        }
        w.completed = None;
        let Some(active) = self.active[cpu.0].as_mut() else {
            let Some(op) = self.queues[cpu.0].next() else {
                return Ok(());
            };
            self.started += 1;
            self.note(cpu);
            if let GuestOp::Unload { delay } = op {
                match w.engine().remove_agent() {
                    Ok(()) => {
                        self.active[cpu.0] = Some(Active {
                            op,
                            plan: Plan {
                                pid: 0,
                                micros: Vec::new(),
                                finish: crate::guest::mm::Finish::Nothing,
                            },
                            probe: None,
                            unload: Some(UnloadPhase::Waiting(delay)),
                            next: 0,
                            end: None,
                            armed: true,
                        })
                    }
                    Err(e) => self.end(cpu, op, OpEnd::Skipped(e.to_string())),
                }
                return Ok(());
            }
            match Self::start_op(w, cpu, op) {
                Ok(Some((plan, probe))) => {
                    let mut a = Active {
                        op,
                        plan,
                        probe,
                        unload: None,
                        next: 0,
                        end: None,
                        armed: false,
                    };
                    let loaded = Self::load_micro(w, cpu, &mut a)?;
                    self.active[cpu.0] = Some(a);
                    if !loaded {
                        self.finish_active(w, cpu);
                    }
                }
                Ok(None) => self.end(cpu, op, OpEnd::Done),
                Err(e) => self.end(cpu, op, OpEnd::Skipped(e.to_string())),
            }
            return Ok(());
        };
        if let Some(phase) = active.unload {
            // Introcore's side of an unload: one phase per step, no guest instruction.
            w.tsc += 1;
            match phase {
                UnloadPhase::Waiting(n) if n > 0 => {
                    active.unload = Some(UnloadPhase::Waiting(n - 1));
                }
                UnloadPhase::Waiting(_) => {
                    w.engine().deploy_unloader();
                    active.unload = Some(UnloadPhase::Gate);
                }
                UnloadPhase::Gate => {
                    if w.engine().deliver_for_unload() {
                        w.engine().complete_unloader();
                        self.note(cpu);
                        self.finish_active(w, cpu);
                    }
                }
            }
            return Ok(());
        }
        if !active.armed {
            // An attack takes what its probe compares against as its instruction first runs.
            active.armed = true;
            if let (Some(p), Some(mut m)) = (
                active.probe.as_mut(),
                active.plan.micros.get(active.next.wrapping_sub(1)).copied(),
            ) {
                crate::attack::arm_probe(w, p, &mut m);
                if let Some(v) = w.vcpus.get_mut(cpu.0) {
                    v.set_reg(Gpr::Rax, m.rax);
                }
            }
        }
        let events_before = w.events.total();
        if let Err(stop) = w.step(cpu) {
            // An attack that must stop the VCPU did, with an alert: the guest hangs on the
            // blocked fetch (B118, B119), so the VCPU runs nothing more. With no agent
            // deployed the jump lands in what is now plain guest memory, and the guest crashes
            // there on its own.
            let alerted = w
                .events
                .since(events_before)
                .iter()
                .any(|e| matches!(e, crate::world::Event::Alert { cpu: c, .. } if *c == cpu));
            if alerted || !w.intro.deployed {
                if let Some(a) = self.active[cpu.0].take_if(|a| a.probe == Some(Probe::MustStop)) {
                    self.note(cpu);
                    self.end(cpu, a.op, OpEnd::Done);
                    self.queues[cpu.0] = OpStream::List(VecDeque::new());
                    return Ok(());
                }
            }
            // A page fault is the guest OS's business (another VCPU unmapped or swapped the
            // page since the operation was planned): the operation ends without effect.
            if let Stop::Guest(vesim_model::Outcome::PageFault { .. }) = stop {
                if let Some(s) = w.stopped.get_mut(cpu.0) {
                    *s = None;
                }
                if let Some(a) = self.active[cpu.0].take() {
                    self.note(cpu);
                    self.end(cpu, a.op, OpEnd::Skipped("page fault".into()));
                }
                return Ok(());
            }
            return Err(stop);
        }
        let rip = w.vcpus[cpu.0].rip;
        // Most steps are inside the instruction: the operation stays where it is.
        if self.active[cpu.0]
            .as_ref()
            .is_none_or(|a| a.end != Some(rip))
        {
            return Ok(());
        }
        let Some(mut a) = self.active[cpu.0].take() else {
            return Ok(());
        };
        let v = &w.vcpus[cpu.0];
        w.completed = Some(crate::world::Completed {
            cpu,
            gpr: v.gpr,
            rip,
            rflags: v.rflags.bits(),
        });
        self.note(cpu);
        let loaded = Self::load_micro(w, cpu, &mut a)?;
        self.active[cpu.0] = Some(a);
        if !loaded {
            self.finish_active(w, cpu);
        }
        Ok(())
    }

    /// Runs every queue to completion under `sched`, at most `steps_max` steps. Returns the
    /// steps taken.
    pub fn run(
        &mut self,
        w: &mut World,
        sched: &mut Scheduler,
        steps_max: u64,
    ) -> Result<u64, (usize, Stop)> {
        let mut runnable = Vec::with_capacity(w.vcpus.len());
        let mut steps = 0;
        while steps < steps_max {
            w.events.new_step();
            self.runnable_into(w, &mut runnable);
            let Some(cpu) = sched.next(&runnable) else {
                return Ok(steps);
            };
            self.op_step(w, VcpuId(cpu)).map_err(|s| (cpu, s))?;
            steps += 1;
        }
        Ok(steps)
    }

    /// Like [`OpRunner::run`], evaluating every invariant of `checker` after every step and
    /// stopping at the first failing step.
    pub fn run_checked(
        &mut self,
        w: &mut World,
        sched: &mut Scheduler,
        checker: &mut crate::check::Checker,
        steps_max: u64,
    ) -> Result<u64, RunFailure> {
        let mut runnable = Vec::with_capacity(w.vcpus.len());
        let mut steps = 0;
        while steps < steps_max {
            w.events.new_step();
            self.runnable_into(w, &mut runnable);
            let Some(cpu) = sched.next(&runnable) else {
                return Ok(steps);
            };
            steps += 1;
            self.checked_step(w, checker, VcpuId(cpu))?;
        }
        Ok(steps)
    }
}

impl OpRunner {
    /// One step of `cpu` with every invariant of `checker` evaluated after it: the
    /// violations (I3 breaches of attacks included), else the VCPU's stop, else `Ok`.
    pub fn checked_step(
        &mut self,
        w: &mut World,
        checker: &mut crate::check::Checker,
        cpu: VcpuId,
    ) -> Result<(), RunFailure> {
        checker.before_step(w, cpu);
        let breaches = self.breaches.len();
        let r = self.op_step(w, cpu);
        let mut v = checker.after_step(w, cpu, &r);
        v.extend(
            self.breaches[breaches..]
                .iter()
                .map(|(c, op, what)| crate::check::Violation {
                    invariant: crate::check::Invariant::I3,
                    step: checker.steps(),
                    cpu: VcpuId(*c),
                    detail: format!("{op}: {what}"),
                }),
        );
        if !v.is_empty() {
            return Err(RunFailure::Violations(v));
        }
        r.map_err(|s| RunFailure::Stopped(cpu.0, s))
    }
}

/// Why a checked run stopped early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunFailure {
    /// Invariants failed after a step.
    Violations(Vec<crate::check::Violation>),
    /// A VCPU stopped.
    Stopped(usize, Stop),
}
