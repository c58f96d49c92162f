//! The hypervisor-side engine (introcore): GPA hooks, page-table monitors, the #VE cache
//! writer, agent deploy (B86–B94), the hypercall handler (B102–B103), dispatch of a raised #VE
//! as an EPT violation (B104–B111), and the emulate-and-commit path for page-table writes.

pub mod cache;
pub mod emulate;
pub mod hooks;
pub mod lifecycle;
pub mod ptm;
pub mod pts;

pub use crate::abi::{break_reason, call, ENOSYS, HC_RAX, HC_RDI, STATUS_NOT_SUPPORTED};

use crate::events::{CacheOp, Counters, Event, EventLog, Stop};
use crate::guest::{cpu_index_of_lsl, software_translate, Guest, GuestConfig};
use crate::layout::{self, veinfo};
use crate::quirks::Quirks;
use cache::CacheWriter;
use hooks::{GpaHooks, HookKind};
use ptm::{CallbackRecord, MonitorId, Ptm, WriteAction};
use vesim_model::ept::{EptEntry, EptFlags, EptQualification, EptView};
use vesim_model::exit::EptViolation;
use vesim_model::vcpu::{Gpr, Vcpu};
use vesim_model::VcpuId;
use vesim_model::{Gfn, Gla, Gpa, Machine, ViewId};

/// The engine's state.
#[derive(Clone, Debug)]
pub struct Introcore {
    /// Quirk switches.
    pub quirks: Quirks,
    /// GPA hooks on the untrusted view.
    pub hooks: GpaHooks,
    /// Page-table monitors.
    pub ptm: Ptm,
    /// The #VE cache writer.
    pub cache: CacheWriter,
    /// The untrusted view.
    pub untrusted: ViewId,
    /// The protected view (B82).
    pub protected: ViewId,
    /// `gVeVeInitialized`.
    pub initialized: bool,
    /// `gVeDeployed`.
    pub deployed: bool,
    /// `gVePendingUnload`.
    pub pending_unload: bool,
    /// CPU-map slot given to each VCPU (None: no information page, #VE off on it).
    pub slots: Vec<Option<u64>>,
    /// Callback records, in order.
    pub callbacks: Vec<CallbackRecord>,
    /// The EPTP index introcore believes current while dispatching a raised #VE: HVMI's
    /// `_VCPU_STATE.EptpIndex` (guests.h), forced at B105 (0 in `hvmi`, Q24). HVMI keeps it
    /// per VCPU; vesim dispatches synchronously inside one VMCALL, so one value serves.
    pub dispatch_view: Option<ViewId>,
    /// Translation hooks.
    pub pts: pts::Pts,
    /// Swap callbacks, in order.
    pub swaps: Vec<pts::SwapRecord>,
    /// GPA of the last real EPT violation: HVMI's `_VCPU_STATE.ExitGpa` (guests.h), which
    /// page-rights validation reuses (`ExitGla` and `ExitAccess` feed only alerts there and are
    /// not kept). One value for the engine, as `dispatch_view`.
    pub last_exit_gpa: Option<Gpa>,
    /// The OS handler bytes the trampoline replaced (`VeCoreReplacedCode`).
    pub replaced_code: Vec<u8>,
    /// Deploy attempts refused by the unload gate, and other lifecycle notes.
    pub unload_refusals: u64,
    /// The GPA hooks the deploy placed on the agent (removed on unload).
    pub agent_hooks: Vec<(Gfn, HookKind)>,
    /// The harness's unraised page walks when the agent was last deployed: its information
    /// pages count from then on.
    pub page_walk_set_at_deploy: u64,
}

impl Introcore {
    /// A fresh engine for `guest`.
    pub fn new(guest: &GuestConfig, quirks: Quirks, seed: u64) -> Self {
        Introcore {
            quirks,
            hooks: GpaHooks::new(guest.untrusted_view),
            ptm: Ptm::default(),
            cache: CacheWriter::new(seed ^ 0x6361_6368_6521),
            untrusted: guest.untrusted_view,
            protected: guest.protected_view,
            initialized: false,
            deployed: false,
            pending_unload: false,
            slots: Vec::new(),
            callbacks: Vec::new(),
            dispatch_view: None,
            pts: pts::Pts::default(),
            swaps: Vec::new(),
            last_exit_gpa: None,
            replaced_code: Vec::new(),
            unload_refusals: 0,
            agent_hooks: Vec::new(),
            page_walk_set_at_deploy: 0,
        }
    }
}

/// Introcore at work: its state and what the hypervisor lets it touch (guest memory and EPT,
/// the VCPUs' state, the guest's configuration and page-table roots, the sinks it reports to,
/// the quirk switches). Built by the world for each call into the engine.
pub struct Engine<'a> {
    /// The engine's state.
    pub intro: &'a mut Introcore,
    /// Memory and EPT.
    pub machine: &'a mut Machine,
    /// The VCPUs.
    pub vcpus: &'a mut [Vcpu],
    /// The guest (its configuration, System CR3 and processes; read only).
    pub guest: &'a Guest,
    /// The event log.
    pub events: &'a mut EventLog,
    /// The harness counters.
    pub counters: &'a mut Counters,
    /// The cache-operation log, when one is kept.
    pub cache_log: &'a mut Option<Vec<CacheOp>>,
    /// Quirk switches.
    pub quirks: Quirks,
    /// Whether #VE is used.
    pub ve: bool,
}

/// Agent sections: (offset, size, writable, executable, is VESTUB).
const SECTIONS: [(u64, u64, bool, bool, bool); 7] = [
    (layout::AGENT_VESTUB, 0x1000, false, true, true),
    (layout::AGENT_CODE, 0x1000, false, true, false),
    (layout::AGENT_DATA, 0x1000, true, false, false),
    (layout::AGENT_CPUMAP, 0x1000, true, false, false),
    (
        layout::AGENT_VEINFO,
        layout::AGENT_VESTACKS - layout::AGENT_VEINFO,
        true,
        false,
        false,
    ),
    (
        layout::AGENT_VESTACKS,
        layout::AGENT_VECACHE - layout::AGENT_VESTACKS,
        true,
        false,
        false,
    ),
    (
        layout::AGENT_VECACHE,
        layout::AGENT_SIZE - layout::AGENT_VECACHE,
        true,
        false,
        false,
    ),
];

/// The B4 / C retpoline trampoline to `target` (24 bytes).
pub fn retpoline(target: u64) -> [u8; 24] {
    let mut t = [0u8; 24];
    t[0..5].copy_from_slice(&[0xE8, 0x03, 0x00, 0x00, 0x00]);
    t[5..8].copy_from_slice(&[0x0F, 0xAE, 0xE8]);
    t[8..11].copy_from_slice(&[0xC7, 0x04, 0x24]);
    t[11..15].copy_from_slice(&(target as u32).to_le_bytes());
    t[15..19].copy_from_slice(&[0xC7, 0x44, 0x24, 0x04]);
    t[19..23].copy_from_slice(&((target >> 32) as u32).to_le_bytes());
    t[23] = 0xC3;
    t
}

impl Engine<'_> {
    fn agent_gpa(off: u64) -> Gpa {
        layout::AGENT_GPA.wrapping_add(off)
    }

    /// B82: create the protected view (RW- for every GPA, not convertible).
    pub fn intro_init(&mut self) {
        let rw = EptFlags::READ | EptFlags::WRITE | EptFlags::SUPPRESS_VE;
        let _ = self
            .machine
            .ept
            .insert(self.intro.protected, EptView::new(EptEntry(rw.bits())));
        self.intro.initialized = true;
    }

    /// B87: write the image, patch it, fill the CPU map, protect it in both views and register
    /// the information pages.
    pub fn deploy_agent(&mut self) -> Result<(), String> {
        let q = self.quirks;
        self.intro.page_walk_set_at_deploy = self.counters.page_walk_set;
        let mem = &mut self.machine.mem;
        // 1. The image: code sections filled with INT3, data zero, cache per Q15.
        mem.write(Self::agent_gpa(layout::AGENT_HEADER), b"MZ");
        mem.write(Self::agent_gpa(layout::AGENT_VESTUB), &[0xCC; 0x1000]);
        mem.write(Self::agent_gpa(layout::AGENT_CODE), &[0xCC; 0x1000]);
        mem.write(Self::agent_gpa(layout::AGENT_DATA), &[0; 0x1000]);
        // Zero-initialised sections: VECPUMAP, VEINFO and VESTACKS.
        for off in (layout::AGENT_CPUMAP..layout::AGENT_VECACHE).step_by(0x1000) {
            let g = Self::agent_gpa(off);
            if mem.frame(g.gfn()).is_some() {
                mem.write(g, &[0; 0x1000]);
            }
        }
        let empty = q.empty_slot().to_le_bytes().repeat(512);
        for line in 0..cache::LINES {
            mem.write(
                Self::agent_gpa(layout::AGENT_VECACHE + line * 0x1000),
                &empty,
            );
        }
        // 2-6. Patches.
        mem.write_u32(
            Self::agent_gpa(layout::STUB_PROTECTED_INDEX_IMM),
            u32::from(self.intro.protected.0),
        );
        mem.write_u32(
            Self::agent_gpa(layout::STUB_UNTRUSTED_INDEX_IMM),
            u32::from(self.intro.untrusted.0),
        );
        mem.write_u32(
            Self::agent_gpa(layout::DATA_SELF_MAP_INDEX),
            self.guest.config.self_map_index as u32,
        );
        mem.write_u64(
            Self::agent_gpa(layout::DATA_MONITORED_BITS),
            q.monitored_bits(),
        );
        mem.write(
            Self::agent_gpa(layout::STUB_KI_KERNEL_EXIT_SLOT),
            &[0x90; 24],
        );
        // 7. Hook the OS #VE handler with the trampoline to the agent entry.
        if let Some(h) = software_translate(self.machine, self.guest.cr3, layout::OS_VE_HANDLER_GVA)
        {
            let mut original = vec![0u8; 24];
            self.machine.mem.read(h, &mut original);
            self.intro.replaced_code = original;
            let t = retpoline(layout::AGENT_GVA + crate::abi::AGENT_ENTRY);
            self.machine.mem.write(h, &t);
        }
        // 8. CPU map (B11, Q19, Q20).
        let unused: u32 = if q.q20_cpu_index { 0 } else { u32::MAX };
        let map = Self::agent_gpa(layout::AGENT_CPUMAP);
        for s in 0..layout::AGENT_MAX_CPUS {
            self.machine.mem.write_u32(map.wrapping_add(4 * s), unused);
        }
        if !q.q17_fill_counter {
            self.intro.cache.reset_counters();
        }
        let n = self.vcpus.len();
        self.intro.slots = vec![None; n];
        let mut taken = std::collections::BTreeSet::new();
        for i in 0..n {
            let seg = self.vcpus[i].seg50;
            let l = if q.q19_cpumap_g && seg.granularity {
                (seg.limit & 0xF_FFFF) << 12
            } else {
                seg.lsl()
            };
            let idx = cpu_index_of_lsl(l);
            let usable = idx < layout::AGENT_MAX_CPUS
                && (i as u64) < layout::AGENT_MAX_CPUS
                && taken.insert(idx);
            if q.q20_cpu_index || usable {
                self.machine
                    .mem
                    .write_u32(map.wrapping_add(4 * idx), i as u32);
                self.intro.slots[i] = Some(idx);
            } else {
                self.events.push(Event::Alert {
                    cpu: VcpuId(i),
                    detail: format!("VCPU {i} has CPU index {idx:#x}: no #VE slot"),
                });
            }
        }
        // 9. Untrusted view (B89): no access to the header and sections, VESTUB execute-only.
        let all = HookKind {
            read: true,
            write: true,
            execute: true,
            page_table: false,
        };
        let rw_only = HookKind {
            execute: false,
            ..all
        };
        let header = Self::agent_gpa(layout::AGENT_HEADER).gfn();
        self.intro.hooks.set(&mut self.machine.ept, header, all);
        self.intro.agent_hooks = vec![(header, all)];
        for (off, size, _, _, stub) in SECTIONS {
            for p in (0..size).step_by(0x1000) {
                let gfn = Self::agent_gpa(off + p).gfn();
                let kind = if stub { rw_only } else { all };
                self.intro.hooks.set(&mut self.machine.ept, gfn, kind);
                self.intro.agent_hooks.push((gfn, kind));
            }
        }
        // 10. Protected view (B90).
        if let Some(view) = self.machine.ept.view_mut(self.intro.protected) {
            for (off, size, w, x, _) in SECTIONS {
                for p in (0..size).step_by(0x1000) {
                    let mut f = EptFlags::READ;
                    if w {
                        f |= EptFlags::WRITE;
                    }
                    if x {
                        f |= EptFlags::EXECUTE;
                    }
                    view.set_rights(Self::agent_gpa(off + p).gfn(), f);
                }
            }
        }
        // 12. Information pages, stacks, Self, Index.
        for i in 0..n {
            let Some(_) = self.intro.slots[i] else {
                self.vcpus[i].ve_info = None;
                self.vcpus[i].ve_enabled = false;
                continue;
            };
            let page_off = layout::AGENT_VEINFO + 0x1000 * i as u64;
            let page = Self::agent_gpa(page_off);
            let m = &mut self.machine.mem;
            let stack = layout::AGENT_GVA
                + layout::AGENT_VESTACKS
                + layout::AGENT_STACK_SIZE * i as u64
                + layout::AGENT_STACK_SIZE
                - 16;
            m.write_u64(page.wrapping_add(veinfo::PROTECTED_STACK), stack);
            m.write_u64(
                page.wrapping_add(veinfo::SELF),
                layout::AGENT_GVA + page_off,
            );
            m.write_u64(page.wrapping_add(veinfo::INDEX), i as u64);
            self.vcpus[i].ve_info = Some(page);
            self.vcpus[i].ve_enabled = true;
        }
        // 11. Swap hooks on every agent page (B91).
        for off in (0..layout::AGENT_SIZE).step_by(0x1000) {
            self.hook_translation(self.guest.cr3, layout::AGENT_GVA + off, pts::Owner::Agent);
        }
        self.intro.deployed = true;
        Ok(())
    }

    /// B93/B94: the loader completed; page-table pages become convertible.
    pub fn complete_loader(&mut self) {
        self.intro.hooks.enable_ve(&mut self.machine.ept);
    }

    /// `IntVeUpdateCacheEntry(entry, monitored)` (B72–B74, Q16).
    pub fn update_cache(&mut self, entry: Gpa, monitored: bool) {
        let q = self.quirks;
        if !self.intro.initialized || !self.intro.deployed {
            return;
        }
        if self.intro.pending_unload && (q.q16_no_evict_on_unload || !monitored) {
            return;
        }
        let Some(page) = Introcore::cache_line_page(self.machine, self.guest, entry) else {
            return;
        };
        if let Some(log) = self.cache_log.as_mut() {
            log.push(if monitored {
                crate::events::CacheOp::Remove(entry.0)
            } else {
                crate::events::CacheOp::Insert(entry.0)
            });
        }
        if monitored {
            self.intro
                .cache
                .remove(&mut self.machine.mem, page, &q, entry);
        } else {
            self.intro.cache.add(&mut self.machine.mem, page, &q, entry);
        }
    }

    /// Places a monitor on the page-table entry at `entry` (B131, B76).
    pub fn place_monitor(&mut self, entry: Gpa) -> MonitorId {
        self.place_monitor_flagged(entry, false)
    }

    /// Places a monitor; `user_root` marks an entry of a user PML4, whose table hook covers
    /// only its low half (PT_UM_ROOT, B131).
    pub fn place_monitor_flagged(&mut self, entry: Gpa, user_root: bool) -> MonitorId {
        let cover = if user_root { 0x800 } else { 0x1000 };
        let p = self.intro.ptm.place_covering(entry, cover);
        if p.hook_table {
            self.intro.hooks.set(
                &mut self.machine.ept,
                entry.gfn(),
                HookKind::PAGE_TABLE_WRITE,
            );
        }
        if p.evict {
            self.update_cache(Gpa(entry.0 & !7), true);
        }
        p.id
    }

    /// Removes a monitor; the table's GPA hook goes at the next commit if it was the last.
    pub fn remove_monitor(&mut self, id: MonitorId) {
        if let Some(gfn) = self.intro.ptm.remove(id) {
            self.intro.hooks.remove(gfn, HookKind::PAGE_TABLE_WRITE);
        }
    }

    /// Commits deferred hook removals (B102 step 6).
    pub fn commit_hooks(&mut self) {
        self.intro.hooks.commit(&mut self.machine.ept);
    }

    /// `IntHandleMemAccess` for a page-table write of `old` → `new` at `gpa` (B114, B132).
    fn pt_write_callbacks(&mut self, gpa: Gpa, old: u64, new: u64) {
        match self.intro.ptm.write(gpa) {
            WriteAction::NotATable => {}
            WriteAction::CacheAdd(entries) => {
                for e in entries {
                    self.update_cache(e, false);
                }
            }
            WriteAction::Uncovered(entries) => {
                // Q27: outside the PT_UM_ROOT range no callback runs; HVMI never caches these
                // entries, `fixed` caches them like any unmonitored entry.
                if !self.quirks.q27_user_pml4 {
                    for e in entries {
                        self.update_cache(e, false);
                    }
                }
            }
            WriteAction::Callbacks(ids) => {
                for id in ids {
                    let r = CallbackRecord {
                        monitor: id,
                        entry: Gpa(gpa.0 & !7),
                        old,
                        new,
                    };
                    self.intro.callbacks.push(r);
                    self.counters.callbacks += 1;
                    self.events.push(Event::Callback(r));
                    self.pts_write(id, old, new);
                }
            }
        }
    }

    /// `IntHandleMemAccess` after introcore emulated a write itself: the write is dropped
    /// early when irrelevant under the monitored bits (B114, B133), entry by entry.
    fn emulated_write_callbacks(&mut self, e: &emulate::Emulation) {
        let bits = self.quirks.monitored_bits();
        for &(entry, old, new) in &e.entries {
            if crate::abi::is_relevant(old, new, bits) {
                self.pt_write_callbacks(entry, old, new);
            }
        }
    }

    /// The VMCALL exit (B102, B103). RIP is advanced by 3 and RAX receives the status.
    pub fn hypercall(&mut self, cpu: usize) {
        let Some(v) = self.vcpus.get(cpu) else {
            return;
        };
        let (rax, rdi, rsi, rdx, rbx, rcx, rip) = (
            v.reg(Gpr::Rax),
            v.reg(Gpr::Rdi),
            v.reg(Gpr::Rsi),
            v.reg(Gpr::Rdx),
            v.reg(Gpr::Rbx),
            v.reg(Gpr::Rcx),
            v.rip,
        );
        self.events.push(Event::Vmcall {
            cpu: VcpuId(cpu),
            rip,
            rdx,
            rbx,
            rcx,
        });
        *self.counters.vmcalls.entry(rdx).or_default() += 1;
        let status = if rax != HC_RAX || rdi != HC_RDI || rsi != 0 {
            ENOSYS
        } else if self.intro.deployed && layout::in_agent(rip) {
            // B103: NOP, BREAK and TRACE succeed; any other number is NOT_SUPPORTED.
            match rdx {
                call::RAISE_EPT => self.raise_ept(cpu, rbx),
                0..=2 => 0,
                _ => STATUS_NOT_SUPPORTED,
            }
        } else {
            ENOSYS
        };
        self.commit_hooks();
        if let Some(v) = self.vcpus.get_mut(cpu) {
            v.set_reg(Gpr::Rax, status);
            v.rip = v.rip.wrapping_add(3);
        }
    }

    fn page_u64(&self, page: Gpa, off: u64) -> u64 {
        self.machine.mem.read_u64(page.wrapping_add(off))
    }

    /// RAISE_EPT: `IntDispatchVeAsEpt` (B104–B111), or the `fixed` Q1 emulation request.
    ///
    /// It stands for HVMI's `_VCPU_STATE` fields of a #VE dispatch (guests.h): `VeContext`
    /// (TRUE for the call's duration: this function), `Gpa`/`Gla` (read from the information
    /// page; `AccessSize` is always 8 here), and `PtEmuBuffer` (`Old`/`New` from the page's
    /// 0x210/0x218, handed to the callbacks as `old`/`new`). `Instruction` is decoded from the
    /// page's 0x260 only on the Q1 `fixed` path (`emulate_for_agent`).
    fn raise_ept(&mut self, cpu: usize, rbx: u64) -> u64 {
        let Some(page) = self.vcpus.get(cpu).and_then(|v| v.ve_info) else {
            // Q23: HVMI enters the debugger and then dereferences NULL; vesim refuses.
            return STATUS_NOT_SUPPORTED;
        };
        let qual = EptQualification::from_bits_retain(self.page_u64(page, veinfo::QUALIFICATION));
        let gla = Gla(self.page_u64(page, veinfo::GLA));
        let gpa = Gpa(self.page_u64(page, veinfo::GPA));
        if !qual.contains(EptQualification::GLA_TRANSLATED) {
            self.raise_page_walk(cpu, gla);
            return 0;
        }
        self.intro.dispatch_view = Some(if self.quirks.q24_eptp_zero {
            ViewId(0)
        } else {
            self.intro.untrusted
        });
        let status = if rbx == 1 && !self.quirks.q1_break_loop {
            self.emulate_for_agent(cpu, page, gla, gpa)
        } else {
            let old = self.page_u64(page, veinfo::OLD_VALUE);
            let new = self.page_u64(page, veinfo::NEW_VALUE);
            // B109: the new value reaches guest memory before any callback runs.
            self.machine.mem.write_u64(gpa, new);
            self.pt_write_callbacks(gpa, old, new);
            0
        };
        if let Some(view) = self.intro.dispatch_view.take() {
            self.validate_page_rights(view);
        }
        status
    }

    /// B104: a raised page walk. Find the process by the current CR3; if it has a separate
    /// user CR3, set A (one CAS, no retry, D and lower levels untouched) in the user PML4 entry
    /// of the GLA when it is present.
    fn raise_page_walk(&mut self, cpu: usize, gla: Gla) {
        let Some(cr3) = self.vcpus.get(cpu).map(|v| v.cr3 & !0xFFF) else {
            return;
        };
        let Some(p) = self
            .guest
            .processes
            .iter()
            .find(|p| p.cr3 & !0xFFF == cr3 && !p.exited)
        else {
            return;
        };
        let Some(user) = p.user_cr3.filter(|u| *u != p.cr3 && *u >= 0x1000) else {
            return;
        };
        let entry = Gpa((user & 0x0000_3FFF_FFFF_F000) | (((gla.0 >> 39) & 0x1FF) * 8));
        let v = self.machine.mem.read_u64(entry);
        if v & 1 != 0 {
            self.machine.mem.write_u64(entry, v | 0x20);
        }
    }

    /// The saved guest state in the #VE page as a VCPU value (for emulation).
    fn saved_vcpu(&self, cpu: usize, page: Gpa) -> Option<vesim_model::vcpu::Vcpu> {
        let mut v = self.vcpus.get(cpu)?.clone();
        for (i, r) in v.gpr.iter_mut().enumerate() {
            *r = self.page_u64(page, veinfo::REGS + 8 * i as u64);
        }
        v.rip = self.page_u64(page, veinfo::RIP);
        v.cs = self.page_u64(page, veinfo::CS) as u16;
        v.rflags = vesim_model::vcpu::Rflags::from_bits_retain(self.page_u64(page, veinfo::RFLAGS));
        v.cr3 = self.page_u64(page, veinfo::CR3);
        Some(v)
    }

    /// Q1 `fixed`: introcore emulates the write the agent refused, runs the callbacks, writes
    /// the entry and the saved registers and RIP.
    fn emulate_for_agent(&mut self, cpu: usize, page: Gpa, gla: Gla, gpa: Gpa) -> u64 {
        let Some(v) = self.saved_vcpu(cpu, page) else {
            return STATUS_NOT_SUPPORTED;
        };
        let mut bytes = [0u8; 16];
        self.machine
            .mem
            .read(page.wrapping_add(veinfo::INSTRUCTION), &mut bytes);
        let e = match emulate::emulate_pt_write(self.machine, &v, Some(&bytes), gla, gpa) {
            Ok(e) => e,
            Err(_) => return STATUS_NOT_SUPPORTED,
        };
        self.emulated_write_callbacks(&e);
        emulate::commit_stores(self.machine, &e);
        let m = &mut self.machine.mem;
        for (i, r) in e.gpr.iter().enumerate() {
            m.write_u64(page.wrapping_add(veinfo::REGS + 8 * i as u64), *r);
        }
        m.write_u64(page.wrapping_add(veinfo::RFLAGS), e.rflags.bits());
        m.write_u64(page.wrapping_add(veinfo::RIP), e.rip);
        m.write_u64(page.wrapping_add(veinfo::OLD_VALUE), e.old);
        m.write_u64(page.wrapping_add(veinfo::NEW_VALUE), e.new);
        0
    }

    /// An EPT-violation exit (the #VE-off path, and violations #VE could not take).
    pub fn handle_ept_violation(
        &mut self,
        cpu: usize,
        v: EptViolation,
        idt_vectoring: Option<u8>,
    ) -> Result<(), Stop> {
        let outcome = vesim_model::Outcome::EptViolation {
            violation: v,
            idt_vectoring,
        };
        let Some(vcpu) = self.vcpus.get(cpu).cloned() else {
            return Err(Stop::Guest(outcome));
        };
        if idt_vectoring.is_some() {
            return Err(Stop::Guest(outcome));
        }
        self.intro.last_exit_gpa = Some(v.gpa);
        if vcpu.eptp_index == self.intro.protected {
            // B119: nothing but agent code may run in the protected view.
            self.events.push(Event::Alert {
                cpu: VcpuId(cpu),
                detail: format!("access to {} in the protected view", v.gpa),
            });
            return Err(Stop::Guest(outcome));
        }
        // Agent pages are the frames carrying the agent's protection (it moves on a remap).
        let agent_page = self
            .intro
            .agent_hooks
            .iter()
            .any(|(g, _)| *g == v.gpa.gfn());
        if agent_page {
            // B118: the untrusted view touched the agent. The action is NotAllowed: a read is
            // blocked silently, a write is blocked with an alert (the instruction is skipped
            // without effect); an execute is an alert and the VCPU cannot go on.
            let fetch = v.qualification.contains(EptQualification::FETCH);
            let write = v.qualification.contains(EptQualification::WRITE);
            if fetch || write {
                self.events.push(Event::Alert {
                    cpu: VcpuId(cpu),
                    detail: format!(
                        "untrusted {} of agent page {}",
                        if fetch { "execute" } else { "write" },
                        v.gpa
                    ),
                });
            }
            if fetch {
                return Err(Stop::Guest(outcome));
            }
            let mut bytes = [0u8; 15];
            let len = if crate::guest::software_read(self.machine, vcpu.cr3, vcpu.rip, &mut bytes) {
                vesim_model::cpu::decode::describe(&bytes, vcpu.rip)
                    .map(|d| d.0)
                    .unwrap_or(0)
            } else {
                0
            };
            if len == 0 {
                return Err(Stop::Guest(outcome));
            }
            if let Some(t) = self.vcpus.get_mut(cpu) {
                t.rip = t.rip.wrapping_add(len as u64);
            }
            return Ok(());
        }
        let counts = self.intro.hooks.counts(v.gpa.gfn());
        let translated = v.qualification.contains(EptQualification::GLA_TRANSLATED);
        if !translated {
            // A page-walk A/D write hit a write-protected table: perform it (baseline).
            return self.resolve_walk_exit(cpu, &vcpu, v);
        }
        if counts.pt > 0 && v.qualification.contains(EptQualification::WRITE) {
            let e = emulate::emulate_pt_write(self.machine, &vcpu, None, v.gla, v.gpa)
                .map_err(|_| Stop::Guest(outcome.clone()))?;
            let relevant = crate::abi::is_relevant(e.old, e.new, self.quirks.monitored_bits());
            if relevant {
                self.pt_write_callbacks(e.entry, e.old, e.new);
            }
            emulate::commit_stores(self.machine, &e);
            if let Some(t) = self.vcpus.get_mut(cpu) {
                t.gpr = e.gpr;
                t.rflags = e.rflags;
                t.rip = e.rip;
            }
            self.commit_hooks();
            return Ok(());
        }
        Err(Stop::Guest(outcome))
    }

    /// Resolves a page-walk exit: the hypervisor makes the A/D writes the walker attempted.
    fn resolve_walk_exit(
        &mut self,
        cpu: usize,
        vcpu: &vesim_model::vcpu::Vcpu,
        v: EptViolation,
    ) -> Result<(), Stop> {
        let mut bytes = [0u8; 15];
        let mut writes_page = false;
        if crate::guest::software_read(self.machine, vcpu.cr3, vcpu.rip, &mut bytes) {
            if let Some(acc) = vesim_model::cpu::decode::accesses_of(&bytes, vcpu) {
                writes_page = acc
                    .iter()
                    .any(|a| a.kind.writes() && a.gla.page_base() == v.gla.page_base());
            }
        }
        let kind = if writes_page {
            vesim_model::paging::AccessType::Write
        } else {
            vesim_model::paging::AccessType::Read
        };
        let ctx = self.machine.walk_context(vcpu, false);
        let w = vesim_model::paging::walk(
            &self.machine.mem,
            |_, _| vesim_model::ept::EptCheck::Allowed,
            &ctx,
            v.gla,
            kind,
        )
        .map_err(|_| {
            Stop::Guest(vesim_model::Outcome::EptViolation {
                violation: v,
                idt_vectoring: None,
            })
        })?;
        for ad in w.ad_writes() {
            let old = self.machine.mem.read_u64(ad.gpa);
            self.machine.mem.write_u64(ad.gpa, old | ad.set.bits());
        }
        let _ = cpu;
        Ok(())
    }
}

/// What the checkers and tests ask of introcore's state.
impl Introcore {
    /// The guest-physical address of the cache line page holding `entry`, as introcore maps
    /// it: through the System CR3 GVA of that line (B72), so a remapped line is found again.
    fn cache_line_page(machine: &Machine, guest: &Guest, entry: Gpa) -> Option<Gpa> {
        let gva = layout::AGENT_GVA + layout::AGENT_VECACHE + cache::line_of(entry) * 0x1000;
        software_translate(machine, guest.cr3, gva)
    }

    /// Whether `entry` is in the agent cache right now.
    pub fn cache_contains(&self, machine: &Machine, guest: &Guest, entry: Gpa) -> bool {
        Self::cache_line_page(machine, guest, entry)
            .is_some_and(|p| CacheWriter::contains(&machine.mem, p, entry))
    }

    /// The monitored entries that are cached: I7 holds when there is none.
    pub fn cached_monitored_entries(&self, machine: &Machine, guest: &Guest) -> Vec<Gpa> {
        self.ptm
            .monitored_entries()
            .into_iter()
            .filter(|e| self.cache_contains(machine, guest, *e))
            .collect()
    }

    /// The hooks on the frame of a guest-physical address.
    pub fn hook_counts(&self, gpa: Gpa) -> hooks::HookCounts {
        self.hooks.counts(Gfn(gpa.0 >> 12))
    }
}
