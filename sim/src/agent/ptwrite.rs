//! `VeHandlePtWrite` (B34–B60): decode the faulting instruction, apply the rejection rules in
//! the order of VE-SEMANTICS section 2, take one of the 512 locks, read the old value, emulate,
//! transplant the flags, test relevance and the cache, raise, store, advance RIP.

use super::decoder::{Analysis, DecodeVerdict, Form, Source};
use super::{rip, status, Agent, AgentOutcome, AgentStep, Resume};
use crate::abi::{break_reason, call, RejectReason};
use crate::events::Stop;
use crate::layout::{self, veinfo};
use vesim_model::cpu::exec::{logic_flags, sub_flags};
use vesim_model::vcpu::{Gpr, Rflags};

/// B38: the address the agent recomputes from the saved registers: the base (trimmed to its
/// size) plus the index (trimmed) times the scale plus the displacement, with no segment base.
/// Q31 (`hvmi`) wraps mod 2^64 even under 0x67; `fixed` wraps mod 2^32 there. Q4 (`hvmi`)
/// ignores the bit-string offset of BT* with a register; `fixed` adds 8 × (offset sar 6).
pub fn agent_gla(a: &Analysis, regs: &[u64; 16], q4: bool, q31: bool) -> u64 {
    let trim = |v: u64, size: u8| match size {
        2 => v & 0xFFFF,
        4 => v & 0xFFFF_FFFF,
        _ => v,
    };
    let mut ea = a.displacement;
    if let Some(b) = a.base {
        ea = ea.wrapping_add(trim(regs[b.gpr as usize], b.size));
    }
    if let Some(i) = a.index {
        ea = ea.wrapping_add(trim(regs[i.gpr as usize], i.size).wrapping_mul(u64::from(a.scale)));
    }
    if !q4 && matches!(a.form, Form::Bts | Form::Btr | Form::Btc | Form::Bt) {
        if let Source::Register(g, 8, false) = a.source {
            ea = ea.wrapping_add(((regs[g as usize] as i64 >> 6) as u64).wrapping_mul(8));
        }
    }
    if !q31 && a.address_size == 4 {
        ea &= 0xFFFF_FFFF;
    }
    ea
}

/// The B41 lock index of an entry address: the first of the PML4, PDP, PD and PT indices that
/// differs from the self-map index, else the entry index.
pub fn lock_index(gla: u64, self_map: u64) -> u64 {
    for shift in [39, 30, 21, 12] {
        let i = (gla >> shift) & 0x1FF;
        if i != self_map {
            return i;
        }
    }
    (gla >> 3) & 0x1FF
}

fn supported_source(a: &Analysis) -> bool {
    match a.form {
        Form::Mov | Form::Or | Form::And | Form::Xor | Form::Bts | Form::Btr | Form::Btc => {
            matches!(a.source, Source::Register(..) | Source::Immediate(_))
        }
        Form::Xchg | Form::Cmpxchg => matches!(a.source, Source::Register(..)),
        Form::Stos => true,
        Form::Bt | Form::Other => false,
    }
}

impl Agent<'_> {
    fn saved_regs(&mut self, page: u64) -> Result<[u64; 16], Stop> {
        let mut b = [0u8; 128];
        self.a_read(page.wrapping_add(veinfo::REGS), &mut b)?;
        let mut r = [0u64; 16];
        for (i, x) in r.iter_mut().enumerate() {
            let mut q = [0u8; 8];
            q.copy_from_slice(&b[i * 8..i * 8 + 8]);
            *x = u64::from_le_bytes(q);
        }
        Ok(r)
    }

    /// A refusal: `hvmi` breaks (and the write retries forever, Q1); `fixed` takes the lock
    /// and asks introcore to emulate.
    pub(crate) fn reject(&mut self, page: u64, reason: RejectReason) -> Result<(), Stop> {
        self.page_write(page, veinfo::LOCAL_REASON, reason.code())?;
        if self.quirks.q1_break_loop {
            let b = if reason == RejectReason::CsNotKernel {
                break_reason::CS_NOT_KERNEL
            } else {
                break_reason::EMULATION_FAILED
            };
            self.page_write(page, veinfo::LOCAL_BREAK, b)?;
            self.set_outcome(page, AgentOutcome::Rejected)?;
            self.set_rip(rip::H_BREAK);
        } else {
            if reason == RejectReason::CsNotKernel {
                // Refused before the decode: fetch the bytes introcore will emulate.
                let rip_saved = self.page_read(page, veinfo::RIP)?;
                let insn = self.fetch_instruction(rip_saved)?;
                self.a_write(page.wrapping_add(veinfo::LOCAL_INSN), &insn)?;
            }
            self.page_write(page, veinfo::LOCAL_STATUS, status::EMU_REQUEST)?;
            self.set_rip(rip::PT_LOCK);
        }
        Ok(())
    }

    /// The VESTATUS HVMI passes with a break for `reason` (C).
    pub(crate) fn break_status(reason: Option<RejectReason>) -> u64 {
        match reason {
            Some(RejectReason::CsNotKernel) => 0x8000_0004,
            Some(RejectReason::DecodeError) => 0x8000_0002,
            Some(_) => 0x8000_0001,
            None => 0,
        }
    }

    fn analysis(&mut self, page: u64) -> Result<Option<Analysis>, Stop> {
        let mut insn = [0u8; 16];
        self.a_read(page.wrapping_add(veinfo::LOCAL_INSN), &mut insn)?;
        let rip = self.page_read(page, veinfo::RIP)?;
        Ok(super::decoder::agent_analyze(
            &insn[..super::AGENT_FETCH_LEN],
            rip,
        ))
    }

    /// B34–B40: decode the 15 bytes the agent fetches at the saved RIP, then the rules in
    /// order.
    pub(crate) fn pt_decode(&mut self) -> Result<(), Stop> {
        let page = self.page_gva()?;
        let rip_saved = self.page_read(page, veinfo::RIP)?;
        let insn = self.fetch_instruction(rip_saved)?;
        self.a_write(page.wrapping_add(veinfo::LOCAL_INSN), &insn)?;
        let (verdict, analysis) =
            super::decoder::decode_verdict(&insn[..super::AGENT_FETCH_LEN], rip_saved);
        if let Some(a) = &analysis {
            self.page_write(page, veinfo::LOCAL_LENGTH, a.length as u64)?;
        }
        let (DecodeVerdict::Decoded(_), Some(a)) = (verdict, analysis) else {
            return match verdict {
                DecodeVerdict::Refused(r) => self.reject(page, r),
                DecodeVerdict::Decoded(_) => self.reject(page, RejectReason::DecodeError),
            };
        };
        let regs = self.saved_regs(page)?;
        let fault_gla = self.page_read(page, veinfo::GLA)?;
        let q = self.quirks;
        let reason = if agent_gla(&a, &regs, q.q4_bt_mod64, q.q31_addr32) != fault_gla {
            Some(RejectReason::GlaMismatch)
        } else if fault_gla & 7 != 0 {
            Some(RejectReason::Misaligned)
        } else if !supported_source(&a) {
            Some(RejectReason::UnsupportedInstruction)
        } else {
            None
        };
        match reason {
            Some(r) => self.reject(page, r),
            None => {
                self.set_rip(rip::PT_LOCK);
                Ok(())
            }
        }
    }

    /// B41: LOCK BTS on the entry's lock; a taken lock spins (PAUSE, same step again).
    pub(crate) fn pt_lock(&mut self) -> Result<(), Stop> {
        let page = self.page_gva()?;
        let gla = self.page_read(page, veinfo::GLA)?;
        let mut s = [0u8; 4];
        self.a_read(layout::AGENT_GVA + layout::DATA_SELF_MAP_INDEX, &mut s)?;
        let idx = lock_index(gla, u64::from(u32::from_le_bytes(s)));
        let word = layout::AGENT_GVA + layout::DATA_LOCKS + (idx / 64) * 8;
        let bit = 1u64 << (idx % 64);
        let old = self.a_rmw_u64(word, |v| v | bit)?;
        if old & bit != 0 {
            return Ok(()); // spin: the step runs again
        }
        self.page_write(page, veinfo::LOCAL_LOCK, idx)?;
        let st = self.page_read(page, veinfo::LOCAL_STATUS)?;
        self.set_rip(if st & status::EMU_REQUEST != 0 {
            rip::PT_EMU_REQUEST
        } else {
            rip::PT_READ_OLD
        });
        Ok(())
    }

    pub(crate) fn unlock(&mut self, page: u64) -> Result<(), Stop> {
        let idx = self.page_read(page, veinfo::LOCAL_LOCK)?;
        if idx < 512 {
            let word = layout::AGENT_GVA + layout::DATA_LOCKS + (idx / 64) * 8;
            let bit = 1u64 << (idx % 64);
            self.a_rmw_u64(word, |v| v & !bit)?;
            self.page_write(page, veinfo::LOCAL_LOCK, u64::MAX)?;
        }
        Ok(())
    }

    /// The old value: an 8-byte load from the GLA in the protected view.
    pub(crate) fn pt_read_old(&mut self) -> Result<(), Stop> {
        let page = self.page_gva()?;
        let gla = self.page_read(page, veinfo::GLA)?;
        let old = self.a_read_u64(gla)?;
        self.page_write(page, veinfo::OLD_VALUE, old)?;
        let st = self.page_read(page, veinfo::LOCAL_STATUS)?;
        self.page_write(page, veinfo::LOCAL_STATUS, st | status::OLD_VALID)?;
        self.set_rip(rip::PT_EMULATE);
        Ok(())
    }

    /// B43–B50: the emulation on the local copy, register side effects in the page, and the
    /// flags transplant with the decoder's Modified/Set/Cleared masks.
    pub(crate) fn pt_emulate(&mut self) -> Result<(), Stop> {
        let page = self.page_gva()?;
        let Some(a) = self.analysis(page)? else {
            return Err(Stop::AgentFault(
                "instruction buffer changed under the agent".into(),
            ));
        };
        let old = self.page_read(page, veinfo::OLD_VALUE)?;
        let mut regs = self.saved_regs(page)?;
        let saved_flags = Rflags::from_bits_retain(self.page_read(page, veinfo::RFLAGS)?);
        let src = match a.source {
            Source::Register(g, _, _) => regs[g as usize],
            Source::Immediate(v) => v,
            Source::Other => 0,
        };
        let mut host = saved_flags;
        let (modified, cleared) = match a.form {
            Form::Cmpxchg => (Rflags::STATUS, Rflags::empty()),
            Form::Or | Form::And | Form::Xor => (
                Rflags::SF | Rflags::ZF | Rflags::PF,
                Rflags::CF | Rflags::OF,
            ),
            Form::Bts | Form::Btr | Form::Btc => (Rflags::CF, Rflags::empty()),
            _ => (Rflags::empty(), Rflags::empty()),
        };
        let new = match a.form {
            Form::Mov => src,
            Form::Stos => {
                if !self.quirks.q5_stosq_rdi {
                    let step = if saved_flags.contains(Rflags::DF) {
                        8u64.wrapping_neg()
                    } else {
                        8
                    };
                    let rdi = regs[Gpr::Rdi as usize];
                    regs[Gpr::Rdi as usize] = if a.address_size == 4 {
                        (rdi as u32).wrapping_add(step as u32) as u64
                    } else {
                        rdi.wrapping_add(step)
                    };
                }
                regs[Gpr::Rax as usize]
            }
            Form::Xchg => {
                if let Source::Register(g, _, _) = a.source {
                    regs[g as usize] = old;
                }
                src
            }
            Form::Cmpxchg => {
                let rax = regs[Gpr::Rax as usize];
                sub_flags(&mut host, rax, old, 8);
                if rax == old {
                    src
                } else {
                    regs[Gpr::Rax as usize] = old;
                    old
                }
            }
            Form::Or | Form::And | Form::Xor => {
                let r = match a.form {
                    Form::Or => old | src,
                    Form::And => old & src,
                    _ => old ^ src,
                };
                logic_flags(&mut host, r, 8);
                r
            }
            Form::Bts | Form::Btr | Form::Btc => {
                let bit = src & 63;
                host.set(Rflags::CF, (old >> bit) & 1 != 0);
                match a.form {
                    Form::Bts => old | 1 << bit,
                    Form::Btr => old & !(1 << bit),
                    _ => old ^ 1 << bit,
                }
            }
            Form::Bt | Form::Other => {
                return Err(Stop::AgentFault(
                    "unsupported form passed the checks".into(),
                ))
            }
        };
        let flags = ((saved_flags & !modified) | (host & modified)) & !cleared;
        let mut out = [0u8; 128];
        for (i, r) in regs.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&r.to_le_bytes());
        }
        self.a_write(page.wrapping_add(veinfo::REGS), &out)?;
        self.page_write(page, veinfo::RFLAGS, flags.bits())?;
        self.page_write(page, veinfo::NEW_VALUE, new)?;
        let st = self.page_read(page, veinfo::LOCAL_STATUS)?;
        self.page_write(page, veinfo::LOCAL_STATUS, st | status::NEW_VALID)?;
        self.set_rip(rip::PT_RELEVANCE);
        Ok(())
    }

    /// B51–B53: relevance under the patched monitored bits, then the cache lookup by GPA.
    pub(crate) fn pt_relevance(&mut self) -> Result<(), Stop> {
        let page = self.page_gva()?;
        let old = self.page_read(page, veinfo::OLD_VALUE)?;
        let new = self.page_read(page, veinfo::NEW_VALUE)?;
        let bits = self.a_read_u64(layout::AGENT_GVA + layout::DATA_MONITORED_BITS)?;
        let relevant = crate::abi::is_relevant(old, new, bits);
        if !relevant {
            self.page_inc(page, veinfo::VE_IGNORED_IRRELEVANT)?;
            self.set_outcome(page, AgentOutcome::IgnoredIrrelevant)?;
            self.set_rip(rip::PT_STORE);
            return Ok(());
        }
        let gpa = self.page_read(page, veinfo::GPA)?;
        self.counters.cache_lookups += 1;
        if let Some(log) = self.cache_log.as_mut() {
            log.push(crate::events::CacheOp::Lookup(gpa));
        }
        if self.agent_cache_lookup(gpa)? {
            self.counters.cache_hits += 1;
            self.page_inc(page, veinfo::VE_IGNORED_CACHE)?;
            self.set_outcome(page, AgentOutcome::IgnoredCache)?;
            self.set_rip(rip::PT_STORE);
        } else {
            self.set_rip(rip::PT_RAISE);
        }
        Ok(())
    }

    /// B71: scan the 8 slots of (line, bucket) for an exact match (the agent's reader).
    pub(crate) fn agent_cache_lookup(&mut self, gpa: u64) -> Result<bool, Stop> {
        use crate::abi::cache::{bucket_of, line_of, slot_offset};
        let g = vesim_model::Gpa(gpa);
        let base =
            layout::AGENT_GVA + layout::AGENT_VECACHE + slot_offset(line_of(g), bucket_of(g), 0);
        let mut slots = [0u8; 64];
        self.a_read(base, &mut slots)?;
        Ok(slots.chunks_exact(8).any(|s| {
            let mut b = [0u8; 8];
            b.copy_from_slice(s);
            u64::from_le_bytes(b) == gpa
        }))
    }

    fn advance_saved_rip(&mut self, page: u64) -> Result<(), Stop> {
        let len = self.page_read(page, veinfo::LOCAL_LENGTH)?;
        self.a_rmw_u64(page.wrapping_add(veinfo::RIP), |r| r.wrapping_add(len))?;
        let st = self.page_read(page, veinfo::LOCAL_STATUS)?;
        self.page_write(page, veinfo::LOCAL_STATUS, st | status::RIP_ADVANCED)
    }

    fn copy_instruction(&mut self, page: u64) -> Result<(), Stop> {
        let mut insn = [0u8; 16];
        self.a_read(page.wrapping_add(veinfo::LOCAL_INSN), &mut insn)?;
        self.a_write(page.wrapping_add(veinfo::INSTRUCTION), &insn)?;
        self.a_write(page.wrapping_add(veinfo::RAISED), &[1])
    }

    /// B54 (and Q6: `fixed` advances RIP before the raise).
    pub(crate) fn pt_raise(&mut self) -> Result<AgentStep, Stop> {
        let page = self.page_gva()?;
        self.copy_instruction(page)?;
        if !self.quirks.q6_rip_after_raise {
            self.advance_saved_rip(page)?;
        }
        self.set_outcome(page, AgentOutcome::Raised)?;
        Ok(self.vmcall(call::RAISE_EPT, 0, 0, Resume::Store))
    }

    /// B55–B56: store NewValue, unlock, RIP += length (unless already advanced), VeMm.
    pub(crate) fn pt_store(&mut self) -> Result<(), Stop> {
        let page = self.page_gva()?;
        let gla = self.page_read(page, veinfo::GLA)?;
        let new = self.page_read(page, veinfo::NEW_VALUE)?;
        self.a_write_u64(gla, new)?;
        self.unlock(page)?;
        let st = self.page_read(page, veinfo::LOCAL_STATUS)?;
        if st & status::RIP_ADVANCED == 0 {
            self.advance_saved_rip(page)?;
        }
        self.page_inc(page, veinfo::VE_MM)?;
        self.set_rip(rip::H_CLEANUP);
        Ok(())
    }

    /// `fixed` Q1: RAISE_EPT with RBX = 1 while holding the lock; introcore emulates (RAX = 0)
    /// or answers NOT_SUPPORTED. The agent neither stores nor advances RIP.
    pub(crate) fn pt_emu_request(&mut self) -> Result<AgentStep, Stop> {
        let page = self.page_gva()?;
        self.copy_instruction(page)?;
        Ok(self.vmcall(call::RAISE_EPT, 1, 0, Resume::EmulationAnswered { page }))
    }

    /// `fixed` Q1, after the VMCALL: RAX 0 means introcore performed the write.
    pub(crate) fn pt_emu_answered(&mut self, page: u64) -> Result<(), Stop> {
        if self.vcpu.reg(Gpr::Rax) == 0 {
            let st = self.page_read(page, veinfo::LOCAL_STATUS)?;
            self.page_write(
                page,
                veinfo::LOCAL_STATUS,
                st | status::OLD_VALID | status::NEW_VALID,
            )?;
            self.set_outcome(page, AgentOutcome::EmulatedByIntrocore)?;
        } else {
            self.set_outcome(page, AgentOutcome::Rejected)?;
        }
        self.set_rip(rip::PT_UNLOCK);
        Ok(())
    }

    /// Unlock without a store.
    pub(crate) fn pt_unlock(&mut self) -> Result<(), Stop> {
        let page = self.page_gva()?;
        self.unlock(page)?;
        self.set_rip(rip::H_CLEANUP);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b41_lock_index_selfmap() {
        let s = 0x1ED;
        // A PTE address in the self-map: the PML4 index of the translated VA.
        let pte = vesim_model::paging::self_map_entry_address(
            s,
            vesim_model::Gla(0xFFFF_F800_1234_5000),
            1,
        );
        assert_eq!(lock_index(pte.0, s), 0x1F0);
        let pml4e = vesim_model::paging::self_map_entry_address(
            s,
            vesim_model::Gla(0x0000_7FF0_0000_0000),
            4,
        );
        assert_eq!(lock_index(pml4e.0, s), 0xFF);
        // Not a self-map address: its own PML4 index.
        assert_eq!(lock_index(0xFFFF_F800_0000_0000, s), 0x1F0);
    }
}
