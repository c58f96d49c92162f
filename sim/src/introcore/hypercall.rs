//! The hypercall handler (B102–B103): a VMCALL from the agent or from guest code, by its
//! registers.

use super::Engine;
use crate::abi::{call, ENOSYS, HC_RAX, HC_RDI, STATUS_NOT_SUPPORTED};
use crate::events::Event;
use crate::layout;
use vesim_model::vcpu::Gpr;
use vesim_model::Gpa;
use vesim_model::VcpuId;

impl Engine<'_> {
    /// The VMCALL exit (B102, B103). RIP is advanced by 3 and RAX receives the status.
    pub fn hypercall(&mut self, cpu: VcpuId) {
        let Some(v) = self.vcpus.get(cpu.0) else {
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
            cpu,
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
        if let Some(v) = self.vcpus.get_mut(cpu.0) {
            v.set_reg(Gpr::Rax, status);
            v.rip = v.rip.wrapping_add(3);
        }
    }

    pub(super) fn page_u64(&self, page: Gpa, off: u64) -> u64 {
        self.machine.mem.read_u64(page.wrapping_add(off))
    }
}
