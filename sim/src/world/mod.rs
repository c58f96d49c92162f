//! One simulated machine: the composition root and the step loop. [`World`] owns the model
//! (memory, EPT, VCPUs), the guest, introcore's state and the sinks; it lends each actor what it
//! may touch for one call ([`World::agent`], [`World::engine`], [`World::mm`]) and steps one
//! VCPU one hardware-visible step at a time ([`World::step`]). Single-threaded and
//! deterministic. `drive` runs memory-manager plans to completion for directed tests.

use crate::agent::{Agent, AgentStep};
mod drive;
mod snapshot;

pub use snapshot::{Reusable, Snapshot, SnapshotError};
pub use vesim_model::tracked::Tracked;

pub use crate::events::{CacheOp, Completed, Counters, Event, EventLog, HarnessError, Stop};
use crate::guest::mm::Mm;
use crate::guest::{Guest, GuestConfig, GuestError};
use crate::introcore::{Engine, Introcore};
use crate::layout;
use crate::quirks::Quirks;
use vesim_model::cpu::MachineConfig;
use vesim_model::vcpu::{Gpr, Vcpu};
use vesim_model::{ExitReason, Gla, Gpa, Machine, Outcome, VcpuId};

/// Options of a world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldConfig {
    /// The guest.
    pub guest: GuestConfig,
    /// Machine options.
    pub machine: MachineConfig,
    /// Quirk switches.
    pub quirks: Quirks,
    /// Seed of the world's random streams.
    pub seed: u64,
    /// Whether #VE is used (false: the baseline, page tables write-protected, not convertible).
    pub ve: bool,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            guest: GuestConfig::default(),
            machine: MachineConfig::default(),
            quirks: Quirks::fixed(),
            seed: 0,
            ve: true,
        }
    }
}

/// One simulated machine.
#[derive(Clone, Debug)]
pub struct World {
    /// Memory and EPT.
    pub machine: Machine,
    /// The VCPUs.
    pub vcpus: Vec<Vcpu>,
    /// Per-VCPU stop state.
    pub stopped: Vec<Option<Stop>>,
    /// The guest.
    pub guest: Guest,
    /// The engine.
    pub intro: Introcore,
    /// Quirk switches.
    pub quirks: Quirks,
    /// Counters.
    pub counters: Counters,
    /// Events, in order ([`EventLog`]).
    pub events: EventLog,
    /// Virtual TSC.
    pub tsc: u64,
    /// Whether #VE is used.
    pub ve: bool,
    /// Per VCPU, the kind of the last #VE counted on it (true: page walk), until its agent
    /// reads the reason.
    last_ve_walk: Vec<Option<bool>>,
    /// When `Some`, every cache operation in order: the agent's lookups and introcore's
    /// inserts and removals (for replaying the workload on other cache designs).
    pub cache_log: Option<Vec<CacheOp>>,
    /// Set by the operation runner for the step in which a guest instruction completed: the
    /// VCPU and its GPRs, RIP and RFLAGS at that point, before the runner loads the next
    /// instruction (what I2 compares).
    pub completed: Option<Completed>,
}

/// Errors building a world.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// The guest could not be built.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// Deploying the agent failed.
    #[error("deploying the agent failed: {0}")]
    Deploy(String),
}

impl World {
    /// Builds the guest, initialises introcore (B82), deploys the agent (B87) and completes
    /// the loader (B93). With `ve` off the agent is deployed identically but page tables are
    /// never made convertible.
    pub fn new(config: WorldConfig) -> Result<World, WorldError> {
        let mut machine = Machine::new(config.machine);
        let (guest, vcpus) = Guest::build(&mut machine, config.guest.clone())?;
        let intro = Introcore::new(&guest.config, config.seed);
        let n = vcpus.len();
        let mut w = World {
            machine,
            vcpus,
            stopped: vec![None; n],
            guest,
            intro,
            quirks: config.quirks,
            counters: Counters::default(),
            events: EventLog::default(),
            tsc: 0,
            ve: config.ve,
            last_ve_walk: Vec::new(),
            cache_log: None,
            completed: None,
        };
        let mut e = w.engine();
        e.intro_init_checked()
            .map_err(|e| WorldError::Deploy(e.to_string()))?;
        e.deploy_agent().map_err(WorldError::Deploy)?;
        if e.ve {
            e.complete_loader();
        }
        Ok(w)
    }

    /// Counts a delivered #VE by kind (VE-SEMANTICS section 3): the CPU only converts EPT
    /// violations (reason 48), so the kind follows qualification bit 8.
    pub fn count_ve(&mut self, cpu: VcpuId, qualification: u64) {
        self.counters.ve_total += 1;
        if qualification & 0x100 == 0 {
            self.counters.ve_page_walk += 1;
        } else {
            self.counters.ve_pt_write += 1;
        }
        if self.last_ve_walk.len() <= cpu.0 {
            self.last_ve_walk.resize(cpu.0 + 1, None);
        }
        self.last_ve_walk[cpu.0] = Some(qualification & 0x100 == 0);
    }

    /// Records a VM exit.
    pub fn count_exit(&mut self, cpu: VcpuId, reason: ExitReason) {
        self.counters.exit(reason.code());
        self.events.push(Event::VmExit {
            cpu,
            reason: reason.code(),
        });
    }

    /// Stops a VCPU.
    pub fn stop(&mut self, cpu: VcpuId, why: Stop) {
        if let Stop::AgentFault(d) = &why {
            self.events.push(Event::AgentFault {
                cpu,
                detail: d.clone(),
            });
        }
        if let Some(s) = self.stopped.get_mut(cpu.0) {
            *s = Some(why);
        }
    }

    /// Runs one hardware-visible step of VCPU `cpu`: an agent step when RIP is in the agent
    /// (or at the hooked OS handler), otherwise one guest instruction with its exits handled by
    /// the hypervisor.
    pub fn step(&mut self, cpu: VcpuId) -> Result<(), Stop> {
        if let Some(Some(s)) = self.stopped.get(cpu.0) {
            return Err(s.clone());
        }
        let Some(vcpu) = self.vcpus.get(cpu.0) else {
            return Err(Stop::Harness(HarnessError::NoVcpu(cpu.0)));
        };
        self.tsc += 1;
        let rip = vcpu.rip;
        // Agent code runs as agent steps: VESTUB in either view, the rest only in the protected
        // view. Anything else at an agent RIP is the guest fetching agent code (B118).
        let stub = (layout::AGENT_GVA + layout::AGENT_VESTUB
            ..layout::AGENT_GVA + layout::AGENT_VESTUB + 0x1000)
            .contains(&rip);
        let r = if self.intro.deployed && rip == layout::OS_VE_HANDLER_GVA {
            self.trampoline_step(cpu)
        } else if layout::in_agent(rip) && (stub || vcpu.eptp_index == self.intro.protected) {
            self.agent_step(cpu)
        } else {
            self.guest_step(cpu)
        };
        if let Err(s) = &r {
            self.stop(cpu, s.clone());
        }
        r
    }

    fn guest_step(&mut self, cpu: VcpuId) -> Result<(), Stop> {
        let step = {
            let World { machine, vcpus, .. } = self;
            let Some(v) = vcpus.get_mut(cpu.0) else {
                return Err(Stop::Harness(HarnessError::NoVcpu(cpu.0)));
            };
            machine.step(v)
        };
        match step.outcome {
            Outcome::Executed => Ok(()),
            Outcome::VeDelivered(v) => {
                self.count_ve(cpu, v.qualification.bits());
                self.events.push(Event::Ve {
                    cpu,
                    qualification: v.qualification.bits(),
                    gla: v.gla,
                    gpa: v.gpa,
                });
                Ok(())
            }
            Outcome::Vmcall => {
                self.vmcall_exit(cpu);
                Ok(())
            }
            Outcome::VmExit(ExitReason::Cpuid) => {
                self.count_exit(cpu, ExitReason::Cpuid);
                self.emulate_cpuid(cpu);
                Ok(())
            }
            Outcome::VmExit(r @ (ExitReason::Rdmsr | ExitReason::Wrmsr)) => {
                self.count_exit(cpu, r);
                if let Some(v) = self.vcpus.get_mut(cpu.0) {
                    if r == ExitReason::Rdmsr {
                        v.set_reg(Gpr::Rax, 0);
                        v.set_reg(Gpr::Rdx, 0);
                    }
                    v.rip = v.rip.wrapping_add(2);
                }
                Ok(())
            }
            Outcome::EptViolation {
                violation,
                idt_vectoring,
            } => {
                self.count_exit(cpu, ExitReason::EptViolation);
                self.engine()
                    .handle_ept_violation(cpu, violation, idt_vectoring)
            }
            o => Err(Stop::Guest(o)),
        }
    }

    /// A VMCALL exit (the guest's or the agent's, B102): counted, then handled by introcore.
    fn vmcall_exit(&mut self, cpu: VcpuId) {
        self.count_exit(cpu, ExitReason::Vmcall);
        self.engine().hypercall(cpu);
    }

    /// Introcore, with what it may touch, for one call into the engine.
    pub fn engine(&mut self) -> Engine<'_> {
        let World {
            machine,
            vcpus,
            guest,
            intro,
            quirks,
            events,
            counters,
            cache_log,
            ve,
            ..
        } = self;
        Engine {
            intro,
            machine,
            vcpus,
            guest,
            events,
            counters,
            cache_log,
            quirks: *quirks,
            ve: *ve,
        }
    }

    /// The guest's memory manager, with guest memory.
    pub fn mm(&mut self) -> Mm<'_> {
        Mm {
            guest: &mut self.guest,
            machine: &mut self.machine,
        }
    }

    /// The agent on VCPU `cpu`, for one step.
    pub fn agent(&mut self, cpu: VcpuId) -> Result<Agent<'_>, Stop> {
        if self.last_ve_walk.len() <= cpu.0 {
            self.last_ve_walk.resize(cpu.0 + 1, None);
        }
        let World {
            machine,
            vcpus,
            events,
            counters,
            cache_log,
            last_ve_walk,
            quirks,
            tsc,
            ..
        } = self;
        Ok(Agent {
            id: cpu,
            vcpu: vcpus
                .get_mut(cpu.0)
                .ok_or(Stop::Harness(HarnessError::NoVcpu(cpu.0)))?,
            machine,
            events,
            counters,
            cache_log,
            ve_kind: &mut last_ve_walk[cpu.0],
            quirks: *quirks,
            tsc: *tsc,
        })
    }

    /// One agent step; a VMCALL it ends in takes the VMCALL exit before the step goes on.
    fn agent_step(&mut self, cpu: VcpuId) -> Result<(), Stop> {
        if let AgentStep::Vmcall(then) = self.agent(cpu)?.step()? {
            self.vmcall_exit(cpu);
            self.agent(cpu)?.resume(then)?;
        }
        Ok(())
    }

    /// The hypervisor's answer to CPUID: the model's table, RIP += 2.
    pub fn emulate_cpuid(&mut self, cpu: VcpuId) {
        if let Some(v) = self.vcpus.get_mut(cpu.0) {
            let r = vesim_model::cpu::cpuid(v.reg(Gpr::Rax) as u32, v.reg(Gpr::Rcx) as u32);
            v.set_reg(Gpr::Rax, r[0].into());
            v.set_reg(Gpr::Rbx, r[1].into());
            v.set_reg(Gpr::Rcx, r[2].into());
            v.set_reg(Gpr::Rdx, r[3].into());
            v.rip = v.rip.wrapping_add(2);
        }
    }

    /// The hooked OS #VE handler: the B4 retpoline (CALL, LFENCE, two MOVs over the return
    /// address, RET) runs in the untrusted view and lands on the agent's main handler.
    fn trampoline_step(&mut self, cpu: VcpuId) -> Result<(), Stop> {
        let target = layout::AGENT_GVA + crate::agent::STUB_ENTRY;
        let World { machine, vcpus, .. } = self;
        let v = vcpus
            .get_mut(cpu.0)
            .ok_or(Stop::Harness(HarnessError::NoVcpu(cpu.0)))?;
        machine
            .translate(
                v,
                Gla(v.rip),
                vesim_model::cpu::mmu::AccessKind::Fetch,
                false,
            )
            .map_err(|f| Stop::AgentFault(format!("trampoline fetch: {f}")))?;
        let slot = Gla(v.gpr[4].wrapping_sub(8));
        machine
            .write_linear(v, slot, &target.to_le_bytes(), false)
            .map_err(|f| Stop::AgentFault(format!("trampoline stack: {f}")))?;
        v.rip = target;
        Ok(())
    }

    /// Runs VCPU `cpu` until its RIP is outside the agent and the hooked handler, at most
    /// `steps_max` steps. Returns the number of steps taken.
    pub fn run_agent(&mut self, cpu: VcpuId, steps_max: u64) -> Result<u64, Stop> {
        let mut n = 0;
        while n < steps_max {
            let rip = self.vcpus.get(cpu.0).map(|v| v.rip).unwrap_or(0);
            if !(layout::in_agent(rip) || rip == layout::OS_VE_HANDLER_GVA) {
                return Ok(n);
            }
            self.step(cpu)?;
            n += 1;
        }
        Ok(n)
    }

    /// The GPA of VCPU `cpu`'s information page, if registered.
    ///
    /// This is HVMI's `_VCPU_STATE.VeInfoPage` (guests.h), by GPA.
    pub fn ve_page(&self, cpu: VcpuId) -> Option<Gpa> {
        self.vcpus.get(cpu.0).and_then(|v| v.ve_info)
    }
}
