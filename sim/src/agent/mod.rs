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

pub use ptwrite::RejectReason;

use crate::layout::{self, veinfo};
use crate::world::{Stop, World};
use vesim_model::cpu::mmu::AccessKind;
use vesim_model::Gla;

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
pub const STUB_ENTRY: u64 = rip::STUB_ENTRY;

/// The disjoint outcomes of a #VE (VE-SEMANTICS section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AgentOutcome {
    /// PT write, not relevant.
    IgnoredIrrelevant,
    /// PT write, relevant, entry cached.
    IgnoredCache,
    /// PT write raised to introcore.
    Raised,
    /// PT write refused by the agent and performed by introcore (`fixed`).
    EmulatedByIntrocore,
    /// PT write refused and not performed.
    Rejected,
    /// B27/B28 break (unknown exit reason).
    Break,
    /// Page walk handled without a raise.
    PageWalkSet,
    /// Page walk raised (KPTI case).
    PageWalkRaised,
}

impl AgentOutcome {
    /// Stable snake-case name.
    pub fn name(self) -> &'static str {
        match self {
            AgentOutcome::IgnoredIrrelevant => "ignored_irrelevant",
            AgentOutcome::IgnoredCache => "ignored_cache",
            AgentOutcome::Raised => "raised",
            AgentOutcome::EmulatedByIntrocore => "emulated_by_introcore",
            AgentOutcome::Rejected => "rejected",
            AgentOutcome::Break => "break",
            AgentOutcome::PageWalkSet => "page_walk_set",
            AgentOutcome::PageWalkRaised => "page_walk_raised",
        }
    }
    fn code(self) -> u64 {
        self as u64 + 1
    }
    /// Every outcome, in code order.
    pub const ALL: [AgentOutcome; 8] = [
        AgentOutcome::IgnoredIrrelevant,
        AgentOutcome::IgnoredCache,
        AgentOutcome::Raised,
        AgentOutcome::EmulatedByIntrocore,
        AgentOutcome::Rejected,
        AgentOutcome::Break,
        AgentOutcome::PageWalkSet,
        AgentOutcome::PageWalkRaised,
    ];
    fn from_code(c: u64) -> Option<AgentOutcome> {
        c.checked_sub(1)
            .and_then(|i| Self::ALL.get(i as usize).copied())
    }
}

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

impl World {
    fn fault(what: &str, f: impl std::fmt::Display) -> Stop {
        Stop::AgentFault(format!("{what}: {f}"))
    }

    /// Reads `buf.len()` bytes at `gla` as the agent, in the VCPU's current view.
    pub(crate) fn a_read(&mut self, cpu: usize, gla: u64, buf: &mut [u8]) -> Result<(), Stop> {
        let World { machine, vcpus, .. } = self;
        let v = vcpus
            .get(cpu)
            .ok_or_else(|| Stop::AgentFault("no VCPU".into()))?;
        machine
            .read_linear(v, Gla(gla), buf, false)
            .map_err(|f| Self::fault(&format!("agent read at {gla:#x}"), f))
    }

    /// Writes `data` at `gla` as the agent.
    pub(crate) fn a_write(&mut self, cpu: usize, gla: u64, data: &[u8]) -> Result<(), Stop> {
        let World { machine, vcpus, .. } = self;
        let v = vcpus
            .get(cpu)
            .ok_or_else(|| Stop::AgentFault("no VCPU".into()))?;
        machine
            .write_linear(v, Gla(gla), data, false)
            .map_err(|f| Self::fault(&format!("agent write at {gla:#x}"), f))
    }

    /// The instruction fetch of HVMI's agent: `NdDecodeEx(&instrux, RIP, 16, ...)` copies
    /// `min(16, ND_MAX_INSTRUCTION_LENGTH)` = 15 bytes from RIP into the zeroed
    /// `INSTRUX.InstructionBytes[16]` before it decodes anything, whatever the instruction's
    /// length. So the agent reads exactly bytes RIP..RIP+14 (a fault on any of them is an agent
    /// fault, B60), and byte 15 of the buffer, which the agent later copies into the
    /// information page's `Instruction` (B54), is always 0.
    pub(crate) fn fetch_instruction(&mut self, cpu: usize, rip: u64) -> Result<[u8; 16], Stop> {
        let mut insn = [0u8; 16];
        self.a_read(cpu, rip, &mut insn[..AGENT_FETCH_LEN])?;
        Ok(insn)
    }

    pub(crate) fn a_read_u64(&mut self, cpu: usize, gla: u64) -> Result<u64, Stop> {
        let mut b = [0u8; 8];
        self.a_read(cpu, gla, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub(crate) fn a_write_u64(&mut self, cpu: usize, gla: u64, v: u64) -> Result<(), Stop> {
        self.a_write(cpu, gla, &v.to_le_bytes())
    }

    /// A locked read-modify-write of a u64 (one access with read and write intent); returns the
    /// old value.
    pub(crate) fn a_rmw_u64(
        &mut self,
        cpu: usize,
        gla: u64,
        f: impl FnOnce(u64) -> u64,
    ) -> Result<u64, Stop> {
        let World { machine, vcpus, .. } = self;
        let v = vcpus
            .get(cpu)
            .ok_or_else(|| Stop::AgentFault("no VCPU".into()))?;
        let span = machine
            .translate_span(v, Gla(gla), 8, AccessKind::ReadWrite, false)
            .map_err(|e| Self::fault(&format!("agent locked access at {gla:#x}"), e))?;
        let mut b = [0u8; 8];
        machine.read_span(&span, &mut b);
        let old = u64::from_le_bytes(b);
        machine.write_span(&span, &f(old).to_le_bytes());
        Ok(old)
    }

    /// The information page's linear address, as the handler holds it ([RSP + 0x28] inside
    /// the C handler, RCX in the stubs).
    pub(crate) fn page_gva(&mut self, cpu: usize) -> Result<u64, Stop> {
        let rsp = self.vcpus.get(cpu).map(|v| v.gpr[4]).unwrap_or(0);
        self.a_read_u64(cpu, rsp.wrapping_add(0x28))
    }

    pub(crate) fn set_rip(&mut self, cpu: usize, off: u64) {
        if let Some(v) = self.vcpus.get_mut(cpu) {
            v.rip = layout::AGENT_GVA + off;
        }
    }

    /// One agent step at the VCPU's RIP.
    pub fn agent_step(&mut self, cpu: usize) -> Result<(), Stop> {
        let Some(v) = self.vcpus.get(cpu) else {
            return Err(Stop::AgentFault("no VCPU".into()));
        };
        let rip = v.rip;
        {
            let World { machine, vcpus, .. } = self;
            let v = vcpus
                .get(cpu)
                .ok_or_else(|| Stop::AgentFault("no VCPU".into()))?;
            machine
                .translate(v, Gla(rip), AccessKind::Fetch, false)
                .map_err(|f| Self::fault(&format!("agent fetch at {rip:#x}"), f))?;
        }
        let off = rip.wrapping_sub(layout::AGENT_GVA);
        match off {
            rip::STUB_ENTRY => self.stub_entry(cpu),
            rip::STUB_SAVE => self.stub_save(cpu),
            rip::STUB_MITIGATE => self.stub_mitigate(cpu),
            rip::STUB_CALL => self.stub_call(cpu),
            rip::STUB_RESTORE => self.stub_restore(cpu),
            rip::STUB_EXIT => self.stub_exit(cpu),
            rip::STUB_RETURN => self.stub_return(cpu),
            rip::STUB_EARLY_EXIT => self.stub_early_exit(cpu),
            rip::H_ENTRY => self.h_entry(cpu),
            rip::H_BREAK => self.h_break(cpu),
            rip::H_CLEANUP => self.h_cleanup(cpu),
            rip::PT_DECODE => self.pt_decode(cpu),
            rip::PT_LOCK => self.pt_lock(cpu),
            rip::PT_READ_OLD => self.pt_read_old(cpu),
            rip::PT_EMULATE => self.pt_emulate(cpu),
            rip::PT_RELEVANCE => self.pt_relevance(cpu),
            rip::PT_RAISE => self.pt_raise(cpu),
            rip::PT_STORE => self.pt_store(cpu),
            rip::PT_EMU_REQUEST => self.pt_emu_request(cpu),
            rip::PT_UNLOCK => self.pt_unlock(cpu),
            rip::PW_PML4 | rip::PW_PDP | rip::PW_PD | rip::PW_LEAF => self.pw_level(cpu, off),
            rip::PW_FINISH => self.pw_finish(cpu),
            _ => Err(Stop::AgentFault(format!(
                "RIP {rip:#x} is inside the agent but not at a step (INT3)"
            ))),
        }
    }

    /// Issues the agent's VMCALL (B33) with RDX = `call`, RBX, RCX; returns RAX afterwards.
    pub(crate) fn agent_vmcall(&mut self, cpu: usize, call: u64, rbx: u64, rcx: u64) -> u64 {
        use vesim_model::vcpu::Gpr;
        if let Some(v) = self.vcpus.get_mut(cpu) {
            v.set_reg(Gpr::Rax, crate::introcore::HC_RAX);
            v.set_reg(Gpr::Rdi, crate::introcore::HC_RDI);
            v.set_reg(Gpr::Rsi, 0);
            v.set_reg(Gpr::Rdx, call);
            v.set_reg(Gpr::Rbx, rbx);
            v.set_reg(Gpr::Rcx, rcx);
        }
        self.count_exit(cpu, vesim_model::ExitReason::Vmcall);
        self.hypercall(cpu);
        self.vcpus.get(cpu).map(|v| v.reg(Gpr::Rax)).unwrap_or(0)
    }

    /// Reads a field of the information page.
    pub(crate) fn page_read(&mut self, cpu: usize, page: u64, off: u64) -> Result<u64, Stop> {
        self.a_read_u64(cpu, page.wrapping_add(off))
    }

    /// Writes a field of the information page.
    pub(crate) fn page_write(
        &mut self,
        cpu: usize,
        page: u64,
        off: u64,
        v: u64,
    ) -> Result<(), Stop> {
        self.a_write_u64(cpu, page.wrapping_add(off), v)
    }

    /// Atomically increments a counter of the information page.
    pub(crate) fn page_inc(&mut self, cpu: usize, page: u64, off: u64) -> Result<(), Stop> {
        self.a_rmw_u64(cpu, page.wrapping_add(off), |v| v.wrapping_add(1))
            .map(|_| ())
    }

    pub(crate) fn set_outcome(
        &mut self,
        cpu: usize,
        page: u64,
        o: AgentOutcome,
    ) -> Result<(), Stop> {
        self.page_write(cpu, page, veinfo::LOCAL_OUTCOME, o.code())
    }

    pub(crate) fn outcome_of(code: u64) -> Option<AgentOutcome> {
        AgentOutcome::from_code(code)
    }
}
