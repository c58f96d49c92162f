//! The agent's lifecycle around deploy (B80–B85, B95–B101, B116, B122, B140): init checks,
//! agent page remaps, unload with the "no RIP inside the agent" gate, redeploy, page-rights
//! validation (Q24) and per-CPU statistics.

use super::hooks::HookKind;
use super::pts::Owner;
use super::Engine;
use crate::events::Event;
use crate::layout::{self, veinfo};
use vesim_model::ept::EptFlags;
use vesim_model::VcpuId;
use vesim_model::{Gfn, Gpa, ViewId};

/// Why `IntVeInit` refused (B80, B81).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InitError {
    /// Already initialised.
    #[error("#VE is already initialised")]
    AlreadyInitialized,
    /// #VE is not needed or not possible (no VMFUNC, more than 64 VCPUs).
    #[error("#VE is not needed: {0}")]
    NotNeeded(&'static str),
    /// A GPA hook exists: #VE must be initialised before any EPT hook.
    #[error("#VE must be initialised before any EPT hook is placed")]
    InvalidInternalState,
}

/// Why an unload step refused (B95).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnloadError {
    /// Nothing to unload, or an unload is already pending.
    #[error("the agent is not deployed, or an unload is already pending")]
    NotNeeded,
}

/// One VCPU's statistics as the agent keeps them (B122).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// VeTotal.
    pub total: u64,
    /// VeMm.
    pub mm: u64,
    /// VePageWalk.
    pub page_walk: u64,
    /// VeIgnoredTotal.
    pub ignored_total: u64,
    /// VeIgnoredCache.
    pub ignored_cache: u64,
    /// VeIgnoredIrrelevant.
    pub ignored_irrelevant: u64,
    /// TscTotal.
    pub tsc_total: u64,
    /// TscCount.
    pub tsc_count: u64,
}

impl Engine<'_> {
    /// `IntVeInit` checks (B80, B81) and the protected view (B82).
    pub fn intro_init_checked(&mut self) -> Result<(), InitError> {
        if self.intro.initialized {
            return Err(InitError::AlreadyInitialized);
        }
        if self.vcpus.len() > 64 {
            return Err(InitError::NotNeeded("more than 64 VCPUs"));
        }
        if self.vcpus.iter().any(|v| !v.vmfunc_enabled) {
            return Err(InitError::NotNeeded("VM functions are not available"));
        }
        if self.intro.hooks.pages().next().is_some() {
            return Err(InitError::InvalidInternalState);
        }
        self.intro_init();
        Ok(())
    }

    /// B116 `IntVeHandleSwap`: an agent page was remapped from `old` to `new` (leaf entries).
    pub(crate) fn agent_swap(&mut self, va: u64, old: u64, new: u64) {
        let addr = |e: u64| Gpa(e & 0x0000_3FFF_FFFF_F000);
        if old & 1 != 0 && new & 1 != 0 && addr(old) == addr(new) {
            return;
        }
        if old & 1 == 0 || new & 1 == 0 {
            self.events.push(Event::Alert {
                cpu: VcpuId(0),
                detail: format!("agent page {va:#x} lost its translation"),
            });
            return;
        }
        let (from, to) = (addr(old), addr(new));
        // 4. Copy the page.
        let mut page = [0u8; 4096];
        self.machine.mem.read(from, &mut page);
        self.machine.mem.write(to, &page);
        // 5. Protected view: the new page takes the old rights; the old one goes back to RW-.
        if let Some(view) = self.machine.ept.view_mut(self.intro.protected) {
            let rights = view.entry(from.gfn()).flags()
                & (EptFlags::READ | EptFlags::WRITE | EptFlags::EXECUTE);
            view.set_rights(to.gfn(), rights);
            view.set_rights(from.gfn(), EptFlags::READ | EptFlags::WRITE);
        }
        // 6. The untrusted-view protection moves with the page.
        let moved: Vec<(usize, HookKind)> = self
            .intro
            .agent_hooks
            .iter()
            .enumerate()
            .filter(|(_, (g, _))| *g == from.gfn())
            .map(|(i, (_, k))| (i, *k))
            .collect();
        for (i, kind) in moved {
            self.intro.hooks.remove(from.gfn(), kind);
            self.intro.hooks.set(&mut self.machine.ept, to.gfn(), kind);
            self.intro.agent_hooks[i] = (to.gfn(), kind);
        }
        self.commit_hooks();
        // 8. An information page is registered again.
        let info_start = layout::AGENT_GVA + layout::AGENT_VEINFO;
        if (info_start..info_start + layout::AGENT_MAX_CPUS * 0x1000).contains(&va) {
            let i = ((va - info_start) / 0x1000) as usize;
            if let Some(v) = self.vcpus.get_mut(i) {
                if v.ve_info.is_some() {
                    v.ve_info = Some(to);
                }
            }
        }
    }

    /// Page-rights validation after a dispatch (`IntValidatePageRights` on the stale
    /// `ExitGpa`, B114, Q24): the rights the hooks imply are written into the view introcore
    /// believes current.
    pub(crate) fn validate_page_rights(&mut self, view: ViewId) {
        let Some(gpa) = self.intro.last_exit_gpa else {
            return;
        };
        let f = super::hooks::GpaHooks::rights(&self.intro.hooks.counts(gpa.gfn()));
        if let Some(v) = self.machine.ept.view_mut(view) {
            v.set_rights(gpa.gfn(), f);
        }
    }

    /// B95: an unload is requested.
    pub fn remove_agent(&mut self) -> Result<(), UnloadError> {
        if !self.intro.initialized || !self.intro.deployed || self.intro.pending_unload {
            return Err(UnloadError::NotNeeded);
        }
        self.intro.pending_unload = true;
        Ok(())
    }

    /// B96: the unloader was injected: no more #VEs are generated.
    pub fn deploy_unloader(&mut self) {
        self.intro.hooks.disable_ve(&mut self.machine.ept);
    }

    /// B140: whether some VCPU's RIP is in the agent, its IDT\[20\] handler (+0x80) or the
    /// cloaked handler region (the unload gate).
    pub fn rip_in_ve_code(&self) -> bool {
        self.vcpus.iter().any(|v| {
            if v.cr3 == 0 || v.rip >> 63 == 0 {
                return false;
            }
            let handler = layout::OS_VE_HANDLER_GVA;
            layout::in_agent(v.rip) || (handler..handler + 0x80).contains(&v.rip)
        })
    }

    /// B97–B98: with the gate open, unhook the agent and answer 0; otherwise answer 1 (the
    /// in-guest unloader spins and retries).
    pub fn deliver_for_unload(&mut self) -> bool {
        if self.rip_in_ve_code() {
            return false;
        }
        // 1. No information page on any VCPU.
        for v in self.vcpus.iter_mut() {
            v.ve_info = None;
            v.ve_enabled = false;
        }
        // 2. The OS handler gets its bytes back.
        if let Some(h) = crate::guest::software_translate(
            self.machine,
            self.guest.cr3,
            layout::OS_VE_HANDLER_GVA,
        ) {
            let code = std::mem::take(&mut self.intro.replaced_code);
            self.machine.mem.write(h, &code);
        }
        // 3. The untrusted-view protection goes.
        for (gfn, kind) in std::mem::take(&mut self.intro.agent_hooks) {
            self.intro.hooks.remove(gfn, kind);
        }
        self.commit_hooks();
        // 4. The swap hooks go.
        let ids: Vec<_> = self
            .intro
            .pts
            .hooks
            .iter()
            .filter(|(_, h)| h.owner == Owner::Agent)
            .map(|(i, _)| *i)
            .collect();
        for id in ids {
            self.unhook_translation(id);
        }
        self.commit_hooks();
        // 5. Protected-view rights back to RW-.
        if let Some(view) = self.machine.ept.view_mut(self.intro.protected) {
            for off in (0..layout::AGENT_SIZE).step_by(0x1000) {
                let g = Gfn((layout::AGENT_GPA.0 + off) >> 12);
                view.set_rights(g, EptFlags::READ | EptFlags::WRITE);
            }
        }
        true
    }

    /// B99: the unloader completed.
    pub fn complete_unloader(&mut self) {
        self.intro.deployed = false;
        self.intro.pending_unload = false;
    }

    /// The whole unload: request, unloader, the gated unhook, completion. Returns false (and
    /// leaves the unload pending) while the gate refuses.
    pub fn unload_agent(&mut self) -> Result<bool, UnloadError> {
        if !self.intro.pending_unload {
            self.remove_agent()?;
            self.deploy_unloader();
        }
        if !self.deliver_for_unload() {
            return Ok(false);
        }
        self.complete_unloader();
        Ok(true)
    }

    /// Deploys the agent again after an unload (B86–B94).
    pub fn redeploy_agent(&mut self) -> Result<(), String> {
        if self.intro.deployed || self.intro.pending_unload {
            return Err("the agent is deployed or an unload is pending".into());
        }
        self.deploy_agent()?;
        if self.ve {
            self.complete_loader();
        }
        Ok(())
    }
}

impl super::Introcore {
    /// Per-CPU statistics from the information pages (B122).
    pub fn ve_stats(
        machine: &vesim_model::Machine,
        vcpus: &[vesim_model::vcpu::Vcpu],
    ) -> Vec<CpuStats> {
        vcpus
            .iter()
            .filter_map(|v| v.ve_info)
            .map(|p| {
                let r = |o: u64| machine.mem.read_u64(p.wrapping_add(o));
                CpuStats {
                    total: r(veinfo::VE_TOTAL),
                    mm: r(veinfo::VE_MM),
                    page_walk: r(veinfo::VE_PAGE_WALK),
                    ignored_total: r(veinfo::VE_IGNORED_TOTAL),
                    ignored_cache: r(veinfo::VE_IGNORED_CACHE),
                    ignored_irrelevant: r(veinfo::VE_IGNORED_IRRELEVANT),
                    tsc_total: r(veinfo::TSC_TOTAL),
                    tsc_count: r(veinfo::TSC_COUNT),
                }
            })
            .collect()
    }
}
