//! The in-guest #VE agent (B5–B69), as a sequence of steps at fixed RIPs inside VESTUB and the
//! code section. All of its state lives in guest memory (the information page, the interrupted
//! and protected stacks, the data section, the cache), and every access it makes is a guest
//! access through paging and EPT in the view the VCPU is in, so a wrong EPT right shows up as
//! a violation (an `agent_fault`, VE-SEMANTICS section 2).
//!
//! - `entry`: VESTUB entry and exit (B5–B25).
//! - `handler`: the decision tree and statistics (B26–B33).
//! - `ptwrite`: decode, rejection rules, lock, emulation, relevance, cache, raise (B34–B60).
//! - `pagewalk`: the self-map A/D emulation (B61–B69).
//! - `cache`: the reader (B71).

pub mod bddisasm;
pub mod decoder;
mod entry;
mod handler;
mod pagewalk;
mod ptwrite;

pub use crate::abi::{AgentOutcome, RejectReason};

use crate::events::{CacheOp, Counters, Event, EventLog, Stop};
use crate::layout::{self, veinfo};
use crate::quirks::Quirks;
use vesim_model::cpu::mmu::AccessKind;
use vesim_model::vcpu::{Gpr, Vcpu};
use vesim_model::{ExitReason, Gla, Machine, VcpuId};

/// How many instruction bytes the agent reads at RIP: bddisasm's `ND_MAX_INSTRUCTION_LENGTH`.
pub const AGENT_FETCH_LEN: usize = vesim_model::cpu::decode::MAX_INSTRUCTION_LEN;

/// Step RIPs, as offsets from the image base.
pub mod rip {
    use crate::layout::{AGENT_CODE, AGENT_VESTUB};
    /// VESTUB main handler: push RAX/RCX, VMFUNC to the protected view (B8).
    pub const STUB_ENTRY: u64 = AGENT_VESTUB;
    /// Protected view: RFLAGS, push RDX/RBX, CPU index, register save, stack switch (B9–B13).
    pub const STUB_SAVE: u64 = AGENT_VESTUB + 0x10;
    /// Mitigations (B14–B16).
    pub const STUB_MITIGATE: u64 = AGENT_VESTUB + 0x20;
    /// Call of the C handler (B17).
    pub const STUB_CALL: u64 = AGENT_VESTUB + 0x30;
    /// Restore and write-back (B17, B18).
    pub const STUB_RESTORE: u64 = AGENT_VESTUB + 0x40;
    /// Pops, semaphore clear, VMFUNC back (B19).
    pub const STUB_EXIT: u64 = AGENT_VESTUB + 0x50;
    /// Untrusted view: pop RCX/RAX and return (B20).
    pub const STUB_RETURN: u64 = AGENT_VESTUB + 0x60;
    /// `fixed` Q20: no usable CPU slot, return at once.
    pub const STUB_EARLY_EXIT: u64 = AGENT_VESTUB + 0x70;
    /// C handler entry (B26–B29).
    pub const H_ENTRY: u64 = AGENT_CODE;
    /// HvBreak (B27–B29, B31).
    pub const H_BREAK: u64 = AGENT_CODE + 0x10;
    /// Cleanup and return (B30).
    pub const H_CLEANUP: u64 = AGENT_CODE + 0x20;
    /// Decode and rejection rules (B34–B40).
    pub const PT_DECODE: u64 = AGENT_CODE + 0x100;
    /// Lock attempt (B41).
    pub const PT_LOCK: u64 = AGENT_CODE + 0x110;
    /// Old-value read (B42).
    pub const PT_READ_OLD: u64 = AGENT_CODE + 0x120;
    /// Emulation and flags (B43–B50).
    pub const PT_EMULATE: u64 = AGENT_CODE + 0x130;
    /// Relevance and cache lookup (B51–B53).
    pub const PT_RELEVANCE: u64 = AGENT_CODE + 0x140;
    /// Raise (B54).
    pub const PT_RAISE: u64 = AGENT_CODE + 0x150;
    /// Store, unlock, RIP (B55, B56).
    pub const PT_STORE: u64 = AGENT_CODE + 0x160;
    /// `fixed` Q1: ask introcore to emulate.
    pub const PT_EMU_REQUEST: u64 = AGENT_CODE + 0x170;
    /// Unlock without store.
    pub const PT_UNLOCK: u64 = AGENT_CODE + 0x180;
    /// Page walk, PML4E (B63).
    pub const PW_PML4: u64 = AGENT_CODE + 0x200;
    /// Page walk, PDPTE.
    pub const PW_PDP: u64 = AGENT_CODE + 0x210;
    /// Page walk, PDE.
    pub const PW_PD: u64 = AGENT_CODE + 0x220;
    /// Page walk, the leaf (B64).
    pub const PW_LEAF: u64 = AGENT_CODE + 0x230;
    /// Page walk, the raise decision (B66).
    pub const PW_FINISH: u64 = AGENT_CODE + 0x240;
}

/// Offset of the agent's entry (what the OS handler's trampoline jumps to).
pub const STUB_ENTRY: u64 = crate::abi::AGENT_ENTRY;

/// Bits of the `LOCAL_STATUS` word.
mod status {
    /// The refusal goes to introcore (`fixed` Q1).
    pub const EMU_REQUEST: u64 = 1 << 0;
    /// `OldValue` holds the value read this time.
    pub const OLD_VALID: u64 = 1 << 1;
    /// `NewValue` holds the value computed this time.
    pub const NEW_VALID: u64 = 1 << 2;
    /// The saved RIP was already advanced (`fixed` Q6).
    pub const RIP_ADVANCED: u64 = 1 << 3;
}

/// The agent running on one VCPU: everything one agent step may touch. The agent keeps no
/// state of its own outside guest memory; this is the machine it runs on, the VCPU it runs on,
/// the sinks it reports to and the quirk switches it was built with.
pub struct Agent<'a> {
    /// The VCPU.
    pub id: VcpuId,
    /// The VCPU.
    pub vcpu: &'a mut Vcpu,
    /// Memory and EPT.
    pub machine: &'a mut Machine,
    /// The event log.
    pub events: &'a mut EventLog,
    /// The harness counters.
    pub counters: &'a mut Counters,
    /// The cache-operation log, when one is kept.
    pub cache_log: &'a mut Option<Vec<CacheOp>>,
    /// The kind of the last #VE counted on this VCPU (true: page walk), until the agent reads
    /// its reason (see [`Counters::ve_unknown`]).
    pub ve_kind: &'a mut Option<bool>,
    /// Quirk switches.
    pub quirks: Quirks,
    /// The virtual TSC.
    pub tsc: u64,
}

/// What an agent step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentStep {
    /// The step completed; RIP names the next one.
    Done,
    /// The step ends in a VMCALL (B33): RAX, RDI, RSI, RDX, RBX and RCX are loaded. The caller
    /// takes the VMCALL exit, then continues the step with [`Agent::resume`].
    Vmcall(Resume),
}

/// Where an agent step goes on after its VMCALL returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// HvBreak: on to the cleanup (B27–B29).
    Cleanup,
    /// The page-walk raise: count the walk, on to the cleanup (B66).
    PageWalkCounted {
        /// The information page.
        page: u64,
    },
    /// The PT-write raise: on to the store (B54).
    Store,
    /// `fixed` Q1: RAX says whether introcore emulated the write.
    EmulationAnswered {
        /// The information page.
        page: u64,
    },
}

impl Agent<'_> {
    fn fault(what: &str, f: impl std::fmt::Display) -> Stop {
        Stop::AgentFault(format!("{what}: {f}"))
    }

    /// Reads `buf.len()` bytes at `gla` as the agent, in the VCPU's current view.
    pub(crate) fn a_read(&mut self, gla: u64, buf: &mut [u8]) -> Result<(), Stop> {
        self.machine
            .read_linear(self.vcpu, Gla(gla), buf, false)
            .map_err(|f| Self::fault(&format!("agent read at {gla:#x}"), f))
    }

    /// Writes `data` at `gla` as the agent.
    pub(crate) fn a_write(&mut self, gla: u64, data: &[u8]) -> Result<(), Stop> {
        self.machine
            .write_linear(self.vcpu, Gla(gla), data, false)
            .map_err(|f| Self::fault(&format!("agent write at {gla:#x}"), f))
    }

    /// The instruction fetch of HVMI's agent: `NdDecodeEx(&instrux, RIP, 16, ...)` copies
    /// `min(16, ND_MAX_INSTRUCTION_LENGTH)` = 15 bytes from RIP into the zeroed
    /// `INSTRUX.InstructionBytes[16]` before it decodes anything, whatever the instruction's
    /// length. So the agent reads exactly bytes RIP..RIP+14 (a fault on any of them is an agent
    /// fault, B60), and byte 15 of the buffer, which the agent later copies into the
    /// information page's `Instruction` (B54), is always 0.
    pub(crate) fn fetch_instruction(&mut self, rip: u64) -> Result<[u8; 16], Stop> {
        let mut insn = [0u8; 16];
        self.a_read(rip, &mut insn[..AGENT_FETCH_LEN])?;
        Ok(insn)
    }

    pub(crate) fn a_read_u64(&mut self, gla: u64) -> Result<u64, Stop> {
        let mut b = [0u8; 8];
        self.a_read(gla, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub(crate) fn a_write_u64(&mut self, gla: u64, v: u64) -> Result<(), Stop> {
        self.a_write(gla, &v.to_le_bytes())
    }

    /// A locked read-modify-write of a u64 (one access with read and write intent); returns the
    /// old value.
    pub(crate) fn a_rmw_u64(&mut self, gla: u64, f: impl FnOnce(u64) -> u64) -> Result<u64, Stop> {
        let span = self
            .machine
            .translate_span(self.vcpu, Gla(gla), 8, AccessKind::ReadWrite, false)
            .map_err(|e| Self::fault(&format!("agent locked access at {gla:#x}"), e))?;
        let mut b = [0u8; 8];
        self.machine.read_span(&span, &mut b);
        let old = u64::from_le_bytes(b);
        self.machine.write_span(&span, &f(old).to_le_bytes());
        Ok(old)
    }

    /// The information page's linear address, as the handler holds it ([RSP + 0x28] inside
    /// the C handler, RCX in the stubs).
    pub(crate) fn page_gva(&mut self) -> Result<u64, Stop> {
        let rsp = self.vcpu.gpr[4];
        self.a_read_u64(rsp.wrapping_add(0x28))
    }

    pub(crate) fn set_rip(&mut self, off: u64) {
        self.vcpu.rip = layout::AGENT_GVA + off;
    }

    /// Records a VM exit the agent's instruction caused.
    fn count_exit(&mut self, reason: ExitReason) {
        self.counters.exit(reason.code());
        self.events.push(Event::VmExit {
            cpu: self.id,
            reason: reason.code(),
        });
    }

    /// The agent could not classify its #VE (see [`Counters::ve_unknown`]): it moves from its
    /// delivered kind to `ve_unknown`.
    fn recount_ve_unknown(&mut self) {
        match self.ve_kind.take() {
            Some(true) => self.counters.ve_page_walk = self.counters.ve_page_walk.saturating_sub(1),
            Some(false) => self.counters.ve_pt_write = self.counters.ve_pt_write.saturating_sub(1),
            None => return,
        }
        self.counters.ve_unknown += 1;
    }

    /// The agent read an exit reason of 48: the delivered kind stands.
    fn last_ve_walk_seen(&mut self) {
        *self.ve_kind = None;
    }

    /// One agent step at the VCPU's RIP.
    pub fn step(&mut self) -> Result<AgentStep, Stop> {
        let rip = self.vcpu.rip;
        self.machine
            .translate(self.vcpu, Gla(rip), AccessKind::Fetch, false)
            .map_err(|f| Self::fault(&format!("agent fetch at {rip:#x}"), f))?;
        let done = |r: Result<(), Stop>| r.map(|()| AgentStep::Done);
        let off = rip.wrapping_sub(layout::AGENT_GVA);
        match off {
            rip::STUB_ENTRY => done(self.stub_entry()),
            rip::STUB_SAVE => done(self.stub_save()),
            rip::STUB_MITIGATE => done(self.stub_mitigate()),
            rip::STUB_CALL => done(self.stub_call()),
            rip::STUB_RESTORE => done(self.stub_restore()),
            rip::STUB_EXIT => done(self.stub_exit()),
            rip::STUB_RETURN => done(self.stub_return()),
            rip::STUB_EARLY_EXIT => done(self.stub_early_exit()),
            rip::H_ENTRY => done(self.h_entry()),
            rip::H_BREAK => self.h_break(),
            rip::H_CLEANUP => done(self.h_cleanup()),
            rip::PT_DECODE => done(self.pt_decode()),
            rip::PT_LOCK => done(self.pt_lock()),
            rip::PT_READ_OLD => done(self.pt_read_old()),
            rip::PT_EMULATE => done(self.pt_emulate()),
            rip::PT_RELEVANCE => done(self.pt_relevance()),
            rip::PT_RAISE => self.pt_raise(),
            rip::PT_STORE => done(self.pt_store()),
            rip::PT_EMU_REQUEST => self.pt_emu_request(),
            rip::PT_UNLOCK => done(self.pt_unlock()),
            rip::PW_PML4 | rip::PW_PDP | rip::PW_PD | rip::PW_LEAF => done(self.pw_level(off)),
            rip::PW_FINISH => self.pw_finish(),
            _ => Err(Stop::AgentFault(format!(
                "RIP {rip:#x} is inside the agent but not at a step (INT3)"
            ))),
        }
    }

    /// The rest of a step after its VMCALL returned.
    pub fn resume(&mut self, resume: Resume) -> Result<(), Stop> {
        match resume {
            Resume::Cleanup => {
                self.set_rip(rip::H_CLEANUP);
                Ok(())
            }
            Resume::PageWalkCounted { page } => self.pw_counted(page),
            Resume::Store => {
                self.set_rip(rip::PT_STORE);
                Ok(())
            }
            Resume::EmulationAnswered { page } => self.pt_emu_answered(page),
        }
    }

    /// Loads the agent's VMCALL (B33) with RDX = `call`, RBX and RCX; the step then returns
    /// [`AgentStep::Vmcall`] and the caller takes the exit.
    pub(crate) fn vmcall(&mut self, call: u64, rbx: u64, rcx: u64, then: Resume) -> AgentStep {
        let v = &mut *self.vcpu;
        v.set_reg(Gpr::Rax, crate::abi::HC_RAX);
        v.set_reg(Gpr::Rdi, crate::abi::HC_RDI);
        v.set_reg(Gpr::Rsi, 0);
        v.set_reg(Gpr::Rdx, call);
        v.set_reg(Gpr::Rbx, rbx);
        v.set_reg(Gpr::Rcx, rcx);
        AgentStep::Vmcall(then)
    }

    /// Reads a field of the information page.
    pub(crate) fn page_read(&mut self, page: u64, off: u64) -> Result<u64, Stop> {
        self.a_read_u64(page.wrapping_add(off))
    }

    /// Writes a field of the information page.
    pub(crate) fn page_write(&mut self, page: u64, off: u64, v: u64) -> Result<(), Stop> {
        self.a_write_u64(page.wrapping_add(off), v)
    }

    /// Atomically increments a counter of the information page.
    pub(crate) fn page_inc(&mut self, page: u64, off: u64) -> Result<(), Stop> {
        self.a_rmw_u64(page.wrapping_add(off), |v| v.wrapping_add(1))
            .map(|_| ())
    }

    pub(crate) fn set_outcome(&mut self, page: u64, o: AgentOutcome) -> Result<(), Stop> {
        self.page_write(page, veinfo::LOCAL_OUTCOME, o.code())
    }

    pub(crate) fn outcome_of(code: u64) -> Option<AgentOutcome> {
        AgentOutcome::from_code(code)
    }
}
