//! Dispatch of a raised #VE (B104–B111): the agent's RAISE_EPT handled as the EPT violation it
//! stands for, a raised page walk, and the emulation introcore performs for a refused write
//! (`fixed` Q1).

use super::{emulate, Engine};
use crate::abi::STATUS_NOT_SUPPORTED;
use crate::layout::veinfo;
use vesim_model::ept::EptQualification;
use vesim_model::{Gla, Gpa, VcpuId, ViewId};

impl Engine<'_> {
    /// RAISE_EPT: `IntDispatchVeAsEpt` (B104–B111), or the `fixed` Q1 emulation request.
    ///
    /// It stands for HVMI's `_VCPU_STATE` fields of a #VE dispatch (guests.h): `VeContext`
    /// (TRUE for the call's duration: this function), `Gpa`/`Gla` (read from the information
    /// page; `AccessSize` is always 8 here), and `PtEmuBuffer` (`Old`/`New` from the page's
    /// 0x210/0x218, handed to the callbacks as `old`/`new`). `Instruction` is decoded from the
    /// page's 0x260 only on the Q1 `fixed` path (`emulate_for_agent`).
    pub(super) fn raise_ept(&mut self, cpu: VcpuId, rbx: u64) -> u64 {
        let Some(page) = self.vcpus.get(cpu.0).and_then(|v| v.ve_info) else {
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
    pub(super) fn raise_page_walk(&mut self, cpu: VcpuId, gla: Gla) {
        let Some(cr3) = self.vcpus.get(cpu.0).map(|v| v.cr3 & !0xFFF) else {
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
    pub(super) fn saved_vcpu(&self, cpu: VcpuId, page: Gpa) -> Option<vesim_model::vcpu::Vcpu> {
        let mut v = self.vcpus.get(cpu.0)?.clone();
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
    pub(super) fn emulate_for_agent(&mut self, cpu: VcpuId, page: Gpa, gla: Gla, gpa: Gpa) -> u64 {
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
}
