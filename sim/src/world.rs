//! One simulated machine: the model, the guest, introcore and the agent, stepped one
//! hardware-visible step at a time. Single-threaded and deterministic.

use crate::agent::{AgentOutcome, RejectReason};
use crate::guest::{Guest, GuestConfig, GuestError};
use crate::introcore::ptm::CallbackRecord;
use crate::introcore::Introcore;
use crate::layout;
use crate::quirks::Quirks;
use std::collections::BTreeMap;
use vesim_model::cpu::MachineConfig;
use vesim_model::vcpu::{Gpr, Vcpu};
use vesim_model::{ExitReason, Gla, Gpa, Machine, Outcome};

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

/// Harness counters (VE-SEMANTICS section 3). All deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// VM exits by basic reason.
    pub exits: BTreeMap<u32, u64>,
    /// #VEs delivered.
    pub ve_total: u64,
    /// Page-walk #VEs (qualification bit 8 clear).
    pub ve_page_walk: u64,
    /// PT-write #VEs (bit 8 set, reason 48).
    pub ve_pt_write: u64,
    /// #VEs the agent could not classify: it found an exit reason other than 48 in the area
    /// (only a corrupted area shows one; the modelled CPU converts only EPT violations), or it
    /// had no usable CPU-map slot and returned at once (`fixed` Q20). Such a #VE moves from its
    /// delivered kind to this one.
    pub ve_unknown: u64,
    /// PT-write outcome: not relevant.
    pub ignored_irrelevant: u64,
    /// PT-write outcome: relevant, entry cached.
    pub ignored_cache: u64,
    /// PT-write outcome: raised to introcore.
    pub raised: u64,
    /// PT-write outcome: refused by the agent, performed by introcore.
    pub emulated_by_introcore: u64,
    /// PT-write outcome: refused and not performed.
    pub rejected: u64,
    /// Breaks (B27/B28).
    pub breaks: u64,
    /// Page walks that set bits without a raise.
    pub page_walk_set: u64,
    /// Page walks that raised (the KPTI case).
    pub page_walk_raised: u64,
    /// VMCALLs by RDX.
    pub vmcalls: BTreeMap<u64, u64>,
    /// Agent cache lookups (relevant writes only).
    pub cache_lookups: u64,
    /// Lookups that found the entry.
    pub cache_hits: u64,
    /// Introcore monitor callbacks invoked.
    pub callbacks: u64,
    /// Page-table-writing instructions the guest memory manager executed.
    pub pt_writes: u64,
}

impl Counters {
    /// Total VM exits.
    pub fn exits_total(&self) -> u64 {
        self.exits.values().sum()
    }
    fn exit(&mut self, reason: u32) {
        *self.exits.entry(reason).or_default() += 1;
    }
}

/// One thing that happened, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A VM exit.
    VmExit {
        /// VCPU.
        cpu: usize,
        /// Basic exit reason.
        reason: u32,
    },
    /// A #VE was delivered.
    Ve {
        /// VCPU.
        cpu: usize,
        /// Qualification.
        qualification: u64,
        /// Guest-linear address.
        gla: u64,
        /// Guest-physical address.
        gpa: u64,
    },
    /// The agent's verdict on a #VE.
    Agent {
        /// VCPU.
        cpu: usize,
        /// Outcome.
        outcome: AgentOutcome,
        /// Rejection reason, for refusals.
        reason: Option<RejectReason>,
        /// Old value read, if any.
        old: Option<u64>,
        /// New value computed, if any.
        new: Option<u64>,
    },
    /// A VMCALL reached the hypervisor.
    Vmcall {
        /// VCPU.
        cpu: usize,
        /// RIP of the VMCALL.
        rip: u64,
        /// RDX (call number).
        rdx: u64,
        /// RBX (argument 1).
        rbx: u64,
        /// RCX (argument 2).
        rcx: u64,
    },
    /// A monitor callback ran.
    Callback(CallbackRecord),
    /// A translation hook's swap callback ran.
    Swap(crate::introcore::pts::SwapRecord),
    /// The agent faulted (I10).
    AgentFault {
        /// VCPU.
        cpu: usize,
        /// What faulted.
        detail: String,
    },
    /// Introcore raised an alert.
    Alert {
        /// VCPU.
        cpu: usize,
        /// What was attempted.
        detail: String,
    },
}

/// The events of a run, in order, and the running trace hash over them.
///
/// Every event is kept unless [`EventLog::keep`] is off; then only the events of the current
/// step are (the window the checkers read), so that a long run's memory does not grow with its
/// length. With a hash started ([`EventLog::hash_from`]) each event's trace line is hashed as it
/// is pushed ([`crate::trace`]).
#[derive(Clone, Debug)]
pub struct EventLog {
    window: Vec<Event>,
    /// Events dropped before the window.
    dropped: u64,
    /// Whether every event is kept.
    keep: bool,
    hasher: Option<sha2::Sha256>,
    line: String,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            window: Vec::new(),
            dropped: 0,
            keep: true,
            hasher: None,
            line: String::new(),
        }
    }
}

impl EventLog {
    /// Appends an event.
    pub fn push(&mut self, e: Event) {
        if let Some(h) = self.hasher.as_mut() {
            crate::trace::hash_event(h, &mut self.line, &e);
        }
        self.window.push(e);
    }

    /// Events pushed so far, dropped ones included.
    pub fn total(&self) -> u64 {
        self.dropped + self.window.len() as u64
    }

    /// The events from number `n` (counted as [`EventLog::total`] counts) that are still held.
    pub fn since(&self, n: u64) -> &[Event] {
        let skip = n.saturating_sub(self.dropped);
        usize::try_from(skip)
            .ok()
            .and_then(|s| self.window.get(s..))
            .unwrap_or(&[])
    }

    /// The events held: all of them while [`EventLog::keep`] is on.
    pub fn held(&self) -> &[Event] {
        &self.window
    }

    /// Keeps every event (`true`, the default) or only the current step's.
    pub fn keep(&mut self, keep: bool) {
        self.keep = keep;
    }

    /// Starts the trace hash from `prefix` (a hasher fed with the trace's header and scenario,
    /// [`crate::trace::TraceFile::prefix_hasher`]); the events pushed from now on are hashed.
    pub fn hash_from(&mut self, prefix: sha2::Sha256) {
        self.hasher = Some(prefix);
    }

    /// Starts a hash of the events alone (no header; what a benchmark of hashing measures).
    pub fn start_hash(&mut self) {
        self.hasher = Some(sha2::Sha256::default());
    }

    /// The trace hash so far (`None` when no hash was started).
    pub fn hash(&self) -> Option<String> {
        self.hasher.clone().map(crate::trace::hex_digest)
    }

    /// Drops the events held (they still count in [`EventLog::total`] and the hash).
    pub fn clear(&mut self) {
        self.dropped += self.window.len() as u64;
        self.window.clear();
    }

    /// A new step starts: unless every event is kept, the previous step's are dropped.
    pub fn new_step(&mut self) {
        if !self.keep {
            self.dropped += self.window.len() as u64;
            self.window.clear();
        }
    }
}

impl PartialEq for EventLog {
    fn eq(&self, other: &Self) -> bool {
        self.window == other.window
            && self.dropped == other.dropped
            && self.keep == other.keep
            && self.hash() == other.hash()
    }
}

impl std::ops::Deref for EventLog {
    type Target = [Event];

    fn deref(&self) -> &[Event] {
        &self.window
    }
}

/// Why a VCPU stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// An access made by the agent faulted (I10: `agent_fault`).
    AgentFault(String),
    /// The guest ended in an outcome the world does not handle (double fault, #PF with no
    /// handler, unsupported instruction, ...).
    Guest(Outcome),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::AgentFault(d) => write!(f, "the agent faulted: {d}"),
            Stop::Guest(o) => write!(f, "the guest stopped at {o}"),
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

/// A VCPU's registers as an instruction left them ([`World::completed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completed {
    /// The VCPU.
    pub cpu: usize,
    /// GPRs.
    pub gpr: [u64; 16],
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
}

/// One operation on the #VE cache, by entry address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOp {
    /// The agent looked the entry up (B71).
    Lookup(u64),
    /// Introcore added the entry (B73–B75).
    Insert(u64),
    /// Introcore evicted the entry (B76).
    Remove(u64),
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
        let intro = Introcore::new(&guest.config, config.quirks, config.seed);
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
        w.intro_init_checked()
            .map_err(|e| WorldError::Deploy(e.to_string()))?;
        w.deploy_agent().map_err(WorldError::Deploy)?;
        if w.ve {
            w.complete_loader();
        }
        Ok(w)
    }

    /// Counts a delivered #VE by kind (VE-SEMANTICS section 3): the CPU only converts EPT
    /// violations (reason 48), so the kind follows qualification bit 8.
    pub fn count_ve(&mut self, cpu: usize, qualification: u64) {
        self.counters.ve_total += 1;
        if qualification & 0x100 == 0 {
            self.counters.ve_page_walk += 1;
        } else {
            self.counters.ve_pt_write += 1;
        }
        if self.last_ve_walk.len() <= cpu {
            self.last_ve_walk.resize(cpu + 1, None);
        }
        self.last_ve_walk[cpu] = Some(qualification & 0x100 == 0);
    }

    /// The agent on `cpu` could not classify its #VE (see `Counters::ve_unknown`): it moves
    /// from its delivered kind to `ve_unknown`.
    pub fn recount_ve_unknown(&mut self, cpu: usize) {
        match self.last_ve_walk.get_mut(cpu).and_then(Option::take) {
            Some(true) => self.counters.ve_page_walk = self.counters.ve_page_walk.saturating_sub(1),
            Some(false) => self.counters.ve_pt_write = self.counters.ve_pt_write.saturating_sub(1),
            None => return,
        }
        self.counters.ve_unknown += 1;
    }

    /// The agent on `cpu` read an exit reason of 48: the delivered kind stands.
    pub fn last_ve_walk_seen(&mut self, cpu: usize) {
        if let Some(k) = self.last_ve_walk.get_mut(cpu) {
            *k = None;
        }
    }

    /// Records a VM exit.
    pub fn count_exit(&mut self, cpu: usize, reason: ExitReason) {
        self.counters.exit(reason.code());
        self.events.push(Event::VmExit {
            cpu,
            reason: reason.code(),
        });
    }

    /// Whether `rip` is inside the agent image (`IntVeIsCurrentRipInAgent`, B121).
    pub fn rip_in_agent(&self, rip: u64) -> bool {
        (layout::AGENT_GVA..layout::AGENT_GVA + layout::AGENT_SIZE).contains(&rip)
    }

    /// Stops a VCPU.
    pub fn stop(&mut self, cpu: usize, why: Stop) {
        if let Stop::AgentFault(d) = &why {
            self.events.push(Event::AgentFault {
                cpu,
                detail: d.clone(),
            });
        }
        if let Some(s) = self.stopped.get_mut(cpu) {
            *s = Some(why);
        }
    }

    /// Runs one hardware-visible step of VCPU `cpu`: an agent step when RIP is in the agent
    /// (or at the hooked OS handler), otherwise one guest instruction with its exits handled by
    /// the hypervisor.
    pub fn step(&mut self, cpu: usize) -> Result<(), Stop> {
        if let Some(Some(s)) = self.stopped.get(cpu) {
            return Err(s.clone());
        }
        let Some(vcpu) = self.vcpus.get(cpu) else {
            return Err(Stop::AgentFault(format!("no VCPU {cpu}")));
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
        } else if self.rip_in_agent(rip) && (stub || vcpu.eptp_index == self.intro.protected) {
            self.agent_step(cpu)
        } else {
            self.guest_step(cpu)
        };
        if let Err(s) = &r {
            self.stop(cpu, s.clone());
        }
        r
    }

    fn guest_step(&mut self, cpu: usize) -> Result<(), Stop> {
        let step = {
            let World { machine, vcpus, .. } = self;
            let Some(v) = vcpus.get_mut(cpu) else {
                return Err(Stop::AgentFault(format!("no VCPU {cpu}")));
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
                    gla: v.gla.0,
                    gpa: v.gpa.0,
                });
                Ok(())
            }
            Outcome::Vmcall => {
                self.count_exit(cpu, ExitReason::Vmcall);
                self.hypercall(cpu);
                Ok(())
            }
            Outcome::VmExit(ExitReason::Cpuid) => {
                self.count_exit(cpu, ExitReason::Cpuid);
                self.emulate_cpuid(cpu);
                Ok(())
            }
            Outcome::VmExit(r @ (ExitReason::Rdmsr | ExitReason::Wrmsr)) => {
                self.count_exit(cpu, r);
                if let Some(v) = self.vcpus.get_mut(cpu) {
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
                self.handle_ept_violation(cpu, violation, idt_vectoring)
            }
            o => Err(Stop::Guest(o)),
        }
    }

    /// The hypervisor's answer to CPUID: the model's table, RIP += 2.
    pub fn emulate_cpuid(&mut self, cpu: usize) {
        if let Some(v) = self.vcpus.get_mut(cpu) {
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
    fn trampoline_step(&mut self, cpu: usize) -> Result<(), Stop> {
        let target = layout::AGENT_GVA + crate::agent::STUB_ENTRY;
        let World { machine, vcpus, .. } = self;
        let v = vcpus
            .get_mut(cpu)
            .ok_or_else(|| Stop::AgentFault(format!("no VCPU {cpu}")))?;
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
    pub fn run_agent(&mut self, cpu: usize, steps_max: u64) -> Result<u64, Stop> {
        let mut n = 0;
        while n < steps_max {
            let rip = self.vcpus.get(cpu).map(|v| v.rip).unwrap_or(0);
            if !(self.rip_in_agent(rip) || rip == layout::OS_VE_HANDLER_GVA) {
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
    pub fn ve_page(&self, cpu: usize) -> Option<Gpa> {
        self.vcpus.get(cpu).and_then(|v| v.ve_info)
    }
}

#[cfg(test)]
mod stop_tests {
    use super::*;

    /// A stop reads as words, not as Rust's debug format.
    #[test]
    fn stops_are_in_words() {
        let s = Stop::Guest(Outcome::Unsupported {
            mnemonic: "int3".into(),
        });
        assert_eq!(
            s.to_string(),
            "the guest stopped at 'int3', an instruction the reference CPU does not implement"
        );
        let pf = Stop::Guest(Outcome::PageFault {
            error_code: vesim_model::paging::PageFaultErrorCode::from_bits_retain(2),
            cr2: Gla(0x1000),
        });
        assert_eq!(
            pf.to_string(),
            "the guest stopped at a page fault at 0x1000 (error code 0x2)"
        );
    }
}
