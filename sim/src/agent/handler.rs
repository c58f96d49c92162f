//! `VirtualizationExceptionHandler` (B26–B33): statistics, dispatch by exit reason and
//! qualification bit 8, breaks, and cleanup.

use super::{rip, status, Agent, AgentOutcome, AgentStep, Resume};
use crate::abi::{break_reason, call};
use crate::events::{Event, Stop};
use crate::layout::{self, veinfo};
use vesim_model::vcpu::Gpr;
use vesim_model::ve_info;

impl Agent<'_> {
    /// B26–B29.
    pub(crate) fn h_entry(&mut self) -> Result<(), Stop> {
        let page = self.page_gva()?;
        let tsc = self.tsc;
        self.page_write(page, veinfo::LOCAL_TSC, tsc)?;
        self.a_write(page.wrapping_add(veinfo::RAISED), &[0])?;
        self.page_inc(page, veinfo::VE_TOTAL)?;
        self.page_write(page, veinfo::LOCAL_OUTCOME, 0)?;
        self.page_write(page, veinfo::LOCAL_REASON, 0)?;
        self.page_write(page, veinfo::LOCAL_STATUS, 0)?;
        self.page_write(page, veinfo::LOCAL_LOCK, u64::MAX)?;
        let mut hw = [0u8; ve_info::HARDWARE_BYTES as usize];
        self.a_read(page, &mut hw)?;
        let hw = ve_info::VeInfo::from_bytes(&hw);
        let (reason, qual) = (hw.reason, hw.qualification.bits());
        if reason != 48 {
            self.recount_ve_unknown();
            self.page_write(page, veinfo::LOCAL_BREAK, break_reason::UNKNOWN_EXIT)?;
            self.set_outcome(page, AgentOutcome::Break)?;
            self.set_rip(rip::H_BREAK);
            return Ok(());
        }
        self.last_ve_walk_seen();
        if qual & 0x100 == 0 {
            self.page_write(page, veinfo::LOCAL_WALK, 1)?;
            self.set_rip(rip::PW_PML4);
            return Ok(());
        }
        let cs = self.page_read(page, veinfo::CS)?;
        if cs != u64::from(layout::KERNEL_CS) {
            self.reject(page, super::RejectReason::CsNotKernel)?;
            return Ok(());
        }
        self.set_rip(rip::PT_DECODE);
        Ok(())
    }

    /// HvBreak: VMCALL BREAK with the reason in RBX (B27–B29); RIP is not advanced (B31).
    pub(crate) fn h_break(&mut self) -> Result<AgentStep, Stop> {
        let page = self.page_gva()?;
        let reason = self.page_read(page, veinfo::LOCAL_BREAK)?;
        let param = Self::break_status(super::RejectReason::from_code(
            self.page_read(page, veinfo::LOCAL_REASON)?,
        ));
        Ok(self.vmcall(call::BREAK, reason, param, Resume::Cleanup))
    }

    /// B30 and the harness's view of the verdict: `VeIgnoredTotal` (all non-raised events in
    /// `hvmi`, Q18; only the ignored outcomes in `fixed`), the TSC counters, then RET.
    pub(crate) fn h_cleanup(&mut self) -> Result<(), Stop> {
        let page = self.page_gva()?;
        let mut raised = [0u8; 1];
        self.a_read(page.wrapping_add(veinfo::RAISED), &mut raised)?;
        let outcome = Self::outcome_of(self.page_read(page, veinfo::LOCAL_OUTCOME)?);
        let count_ignored = if self.quirks.q18_stats {
            raised[0] == 0
        } else {
            matches!(
                outcome,
                Some(
                    AgentOutcome::IgnoredIrrelevant
                        | AgentOutcome::IgnoredCache
                        | AgentOutcome::PageWalkSet
                )
            )
        };
        if raised[0] == 0 {
            let t0 = self.page_read(page, veinfo::LOCAL_TSC)?;
            let elapsed = self.tsc.wrapping_sub(t0);
            self.a_rmw_u64(page.wrapping_add(veinfo::TSC_TOTAL), |v| {
                v.wrapping_add(elapsed)
            })?;
            self.page_inc(page, veinfo::TSC_COUNT)?;
        }
        if count_ignored {
            self.page_inc(page, veinfo::VE_IGNORED_TOTAL)?;
        }
        let st = self.page_read(page, veinfo::LOCAL_STATUS)?;
        let reason = super::RejectReason::from_code(self.page_read(page, veinfo::LOCAL_REASON)?);
        let old = if st & status::OLD_VALID != 0 {
            Some(self.page_read(page, veinfo::OLD_VALUE)?)
        } else {
            None
        };
        let new = if st & status::NEW_VALID != 0 {
            Some(self.page_read(page, veinfo::NEW_VALUE)?)
        } else {
            None
        };
        if let Some(o) = outcome {
            let c = &mut self.counters;
            match o {
                AgentOutcome::IgnoredIrrelevant => c.ignored_irrelevant += 1,
                AgentOutcome::IgnoredCache => c.ignored_cache += 1,
                AgentOutcome::Raised => c.raised += 1,
                AgentOutcome::EmulatedByIntrocore => c.emulated_by_introcore += 1,
                AgentOutcome::Rejected => c.rejected += 1,
                // A break has no counter of its own: its VMCALL is counted by RDX.
                AgentOutcome::Break => {}
                AgentOutcome::PageWalkSet => c.page_walk_set += 1,
                AgentOutcome::PageWalkRaised => c.page_walk_raised += 1,
            }
            self.events.push(Event::Agent {
                cpu: self.id,
                outcome: o,
                reason,
                old,
                new,
            });
        }
        // RET to the stub.
        let rsp = self.vcpu.gpr[4];
        let ret = self.a_read_u64(rsp)?;
        let v = &mut *self.vcpu;
        v.gpr[4] = rsp.wrapping_add(8);
        v.rip = ret;
        v.set_reg(Gpr::Rcx, page);
        Ok(())
    }
}
