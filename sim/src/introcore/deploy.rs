//! Deploying the agent (B82, B86–B94): the protected view, the image and its patches, the OS
//! handler's trampoline, the CPU map, both views' rights on the agent, the information pages
//! and the swap hooks.

use super::cache::{self};
use super::hooks::HookKind;
use super::{pts, Engine};
use crate::events::Event;
use crate::guest::{cpu_index_of_lsl, software_translate};
use crate::layout::{self, veinfo};
use vesim_model::ept::{EptEntry, EptFlags, EptView};
use vesim_model::Gpa;
use vesim_model::VcpuId;

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
    pub(super) fn agent_gpa(off: u64) -> Gpa {
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
}
