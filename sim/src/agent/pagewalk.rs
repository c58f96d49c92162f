//! `VeHandlePageWalk` (B61–B69): re-walk the faulting GLA through the self-map of the current
//! CR3 and set the A (and D) bits the walker wanted, with the lock and CAS of B65.
//!
//! `hvmi` (Q10): A on every level where clear; at the leaf, D first if the leaf is already
//! accessed and writable (or CR0.WP clear) whatever the access, then A. `fixed`: the
//! instruction at the saved RIP is decoded, and the leaf gets A, and D iff it writes the page,
//! in the same #VE.

use super::{rip, Agent, AgentOutcome, AgentStep, Resume};
use crate::abi::call;
use crate::events::Stop;
use crate::layout::{self, veinfo};
use vesim_model::paging::self_map_entry_address;
use vesim_model::Gla;

const P: u64 = 1;
const RW: u64 = 1 << 1;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;

impl Agent<'_> {
    /// B65: lock the entry's self-map address, CAS-set `mask` while the entry is present, unlock.
    /// Returns false when the lock is taken (spin).
    fn pw_set_bits(&mut self, entry_gla: u64, mask: u64, self_map: u64) -> Result<bool, Stop> {
        let idx = super::ptwrite::lock_index(entry_gla, self_map);
        let word = layout::AGENT_GVA + layout::DATA_LOCKS + (idx / 64) * 8;
        let bit = 1u64 << (idx % 64);
        let old = self.a_rmw_u64(word, |v| v | bit)?;
        if old & bit != 0 {
            return Ok(false);
        }
        self.a_rmw_u64(entry_gla, |v| if v & P != 0 { v | mask } else { v })?;
        self.a_rmw_u64(word, |v| v & !bit)?;
        Ok(true)
    }

    fn self_map_index(&mut self) -> Result<u64, Stop> {
        let mut s = [0u8; 4];
        self.a_read(layout::AGENT_GVA + layout::DATA_SELF_MAP_INDEX, &mut s)?;
        Ok(u64::from(u32::from_le_bytes(s)))
    }

    /// Whether the instruction at the saved RIP writes the page of `gla` (Q10 `fixed`).
    fn walk_for_write(&mut self, page: u64, gla: u64) -> Result<bool, Stop> {
        let rip_saved = self.page_read(page, veinfo::RIP)?;
        let insn = self.fetch_instruction(rip_saved)?;
        let mut v = self.vcpu.clone();
        let mut regs = [0u8; 128];
        self.a_read(page.wrapping_add(veinfo::REGS), &mut regs)?;
        for (i, r) in v.gpr.iter_mut().enumerate() {
            let mut q = [0u8; 8];
            q.copy_from_slice(&regs[i * 8..i * 8 + 8]);
            *r = u64::from_le_bytes(q);
        }
        v.rip = rip_saved;
        let Some(acc) = vesim_model::cpu::decode::accesses_of(&insn[..super::AGENT_FETCH_LEN], &v)
        else {
            return Ok(false);
        };
        Ok(acc.iter().any(|a| {
            a.kind.writes() && {
                let first = a.gla.page_base();
                let last = a.gla.wrapping_add(a.size - 1).page_base();
                first == Gla(gla).page_base() || last == Gla(gla).page_base()
            }
        }))
    }

    /// One level of the walk (B62–B64).
    pub(crate) fn pw_level(&mut self, off: u64) -> Result<(), Stop> {
        let page = self.page_gva()?;
        let gla = self.page_read(page, veinfo::GLA)?;
        let s = self.self_map_index()?;
        let level: u8 = match off {
            rip::PW_PML4 => 4,
            rip::PW_PDP => 3,
            rip::PW_PD => 2,
            _ => 1,
        };
        // At PW_LEAF the leaf level was stored by the level that found it.
        let walk = self.page_read(page, veinfo::LOCAL_WALK)?;
        let leaf_level = if off == rip::PW_LEAF {
            ((walk >> 8) & 0xF).max(1) as u8
        } else {
            level
        };
        let entry_gla = self_map_entry_address(s, Gla(gla), leaf_level).0;
        let e = self.a_read_u64(entry_gla)?;
        if e & P == 0 {
            // B62: not present, nothing more to do.
            self.set_outcome(page, AgentOutcome::PageWalkSet)?;
            self.set_rip(rip::PW_FINISH);
            self.page_write(page, veinfo::LOCAL_WALK, walk & !1 | 1 << 1)?;
            return Ok(());
        }
        let mut setall = walk & 1;
        let is_leaf = off == rip::PW_LEAF || level == 1 || (level != 4 && e & PS != 0);
        if !is_leaf {
            if e & A == 0 {
                setall = 0;
                if !self.pw_set_bits(entry_gla, A, s)? {
                    return Ok(());
                }
            }
            let next = match level {
                4 => rip::PW_PDP,
                3 => rip::PW_PD,
                _ => rip::PW_LEAF,
            };
            let leaf_hint = if next == rip::PW_LEAF { 1u64 } else { 0 };
            self.page_write(page, veinfo::LOCAL_WALK, setall | (leaf_hint << 8))?;
            self.set_rip(next);
            return Ok(());
        }
        if off != rip::PW_LEAF {
            // A large page: the leaf step runs on this level.
            self.page_write(page, veinfo::LOCAL_WALK, setall | (u64::from(level) << 8))?;
            self.set_rip(rip::PW_LEAF);
            return Ok(());
        }
        // The leaf step (B64).
        let mut mask = 0u64;
        if self.quirks.q10_walk_ad_order {
            let cr0 = self.page_read(page, veinfo::CR0)?;
            let wp = cr0 & (1 << 16) != 0;
            if e & A != 0 && (e & RW != 0 || !wp) {
                if e & D == 0 {
                    setall = 0;
                }
                mask |= D;
            } else if e & A == 0 {
                setall = 0;
                mask |= A;
            }
        } else {
            let write = self.walk_for_write(page, gla)?;
            let want = if write { A | D } else { A };
            if e & want != want {
                setall = 0;
            }
            mask = want;
        }
        if mask != 0 && !self.pw_set_bits(entry_gla, mask, s)? {
            return Ok(());
        }
        self.page_write(page, veinfo::LOCAL_WALK, setall)?;
        self.set_rip(rip::PW_FINISH);
        Ok(())
    }

    /// B66–B67: raise when nothing was set and the GLA is a user address (the KPTI case).
    pub(crate) fn pw_finish(&mut self) -> Result<AgentStep, Stop> {
        let page = self.page_gva()?;
        let gla = self.page_read(page, veinfo::GLA)?;
        let walk = self.page_read(page, veinfo::LOCAL_WALK)?;
        let early = walk & 2 != 0;
        if !early && walk & 1 != 0 && gla >> 63 == 0 {
            self.a_write(page.wrapping_add(veinfo::RAISED), &[1])?;
            self.set_outcome(page, AgentOutcome::PageWalkRaised)?;
            return Ok(self.vmcall(call::RAISE_EPT, 0, 0, Resume::PageWalkCounted { page }));
        }
        self.set_outcome(page, AgentOutcome::PageWalkSet)?;
        self.pw_counted(page)?;
        Ok(AgentStep::Done)
    }

    /// B66, after the raise if there was one: `VePageWalk` += 1, on to the cleanup.
    pub(crate) fn pw_counted(&mut self, page: u64) -> Result<(), Stop> {
        self.page_inc(page, veinfo::VE_PAGE_WALK)?;
        self.set_rip(rip::H_CLEANUP);
        Ok(())
    }
}
