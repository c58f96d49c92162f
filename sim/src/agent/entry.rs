//! VESTUB: entry into the protected view, the register save, the stack switch, and the way
//! back (B7–B25).

use super::rip;
use super::Agent;
use crate::events::Stop;
use crate::guest::cpu_index_of_lsl;
use crate::layout::{self, veinfo};
use vesim_model::vcpu::{Gpr, Rflags};
use vesim_model::{ExitReason, Outcome};

impl Agent<'_> {
    fn push(&mut self, value: u64) -> Result<(), Stop> {
        let rsp = self.vcpu.gpr[4].wrapping_sub(8);
        self.a_write_u64(rsp, value)?;
        self.vcpu.gpr[4] = rsp;
        Ok(())
    }

    fn pop(&mut self) -> Result<u64, Stop> {
        let rsp = self.vcpu.gpr[4];
        let v = self.a_read_u64(rsp)?;
        self.vcpu.gpr[4] = rsp.wrapping_add(8);
        Ok(v)
    }

    /// Reads the patched imm32 at a VESTUB offset as the instruction fetch it is.
    fn stub_imm32(&mut self, off: u64) -> Result<u32, Stop> {
        let gla = layout::AGENT_GVA + off;
        let Agent { machine, vcpu, .. } = self;
        let g = machine
            .translate(
                vcpu,
                vesim_model::Gla(gla),
                vesim_model::cpu::mmu::AccessKind::Fetch,
                false,
            )
            .map_err(|f| Stop::AgentFault(format!("fetch of the patched index: {f}")))?;
        Ok(machine.mem.read_u32(g))
    }

    fn vmfunc_to(&mut self, index: u32) -> Result<(), Stop> {
        let v = &mut *self.vcpu;
        v.set_reg(Gpr::Rax, 0);
        v.set_reg(Gpr::Rcx, u64::from(index));
        match self.machine.vmfunc(&mut *self.vcpu, 0) {
            Outcome::Executed => Ok(()),
            o => Err(Stop::AgentFault(format!(
                "VMFUNC to view {index}: {}",
                o.name()
            ))),
        }
    }

    /// B8: push RAX and RCX on the interrupted stack, EAX = 0, ECX = the patched protected
    /// index, VMFUNC.
    pub(crate) fn stub_entry(&mut self) -> Result<(), Stop> {
        let (rax, rcx) = (self.vcpu.reg(Gpr::Rax), self.vcpu.reg(Gpr::Rcx));
        self.push(rax)?;
        self.push(rcx)?;
        let index = self.stub_imm32(layout::STUB_PROTECTED_INDEX_IMM)?;
        self.vmfunc_to(index)?;
        self.set_rip(rip::STUB_SAVE);
        Ok(())
    }

    /// B9–B13: RFLAGS = 2, push RDX and RBX, the CPU index from LSL(0x50) and the CPU map,
    /// the register save into the information page, OriginalStack, RSP = ProtectedStack.
    pub(crate) fn stub_save(&mut self) -> Result<(), Stop> {
        self.vcpu.rflags = Rflags::FIXED1;
        let (rdx, rbx) = (self.vcpu.reg(Gpr::Rdx), self.vcpu.reg(Gpr::Rbx));
        self.push(rdx)?;
        self.push(rbx)?;
        let l = self.vcpu.seg50.lsl();
        let idx = cpu_index_of_lsl(l);
        let q = self.quirks;
        if !q.q20_cpu_index && idx >= layout::AGENT_MAX_CPUS {
            self.recount_ve_unknown();
            self.set_rip(rip::STUB_EARLY_EXIT);
            return Ok(());
        }
        let mut slot = [0u8; 4];
        let map = layout::AGENT_GVA + layout::AGENT_CPUMAP;
        self.a_read(map.wrapping_add(4 * idx), &mut slot)?;
        let value = u32::from_le_bytes(slot);
        if !q.q20_cpu_index && value == u32::MAX {
            self.recount_ve_unknown();
            self.set_rip(rip::STUB_EARLY_EXIT);
            return Ok(());
        }
        let page =
            (layout::AGENT_GVA + layout::AGENT_VEINFO).wrapping_add(u64::from(value) * 0x1000);
        // The interrupted stack: RBX, RDX, RCX, RAX, then the IRET frame.
        let rsp = self.vcpu.gpr[4];
        let mut frame = [0u8; 0x48];
        self.a_read(rsp, &mut frame)?;
        let q64 = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&frame[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let v = &*self.vcpu;
        let mut save = [0u8; 0x1D0];
        let mut put = |off: u64, val: u64| {
            let o = (off - veinfo::REGS) as usize;
            save[o..o + 8].copy_from_slice(&val.to_le_bytes());
        };
        put(veinfo::REGS, q64(3));
        put(veinfo::REGS + 8, q64(2));
        put(veinfo::REGS + 16, q64(1));
        put(veinfo::REGS + 24, q64(0));
        put(veinfo::REGS + 32, q64(7));
        for i in 5..16u64 {
            put(veinfo::REGS + 8 * i, v.gpr[i as usize]);
        }
        put(veinfo::RIP, q64(4));
        put(veinfo::CS, q64(5));
        put(veinfo::RFLAGS, q64(6));
        put(veinfo::CR0, v.cr0.bits());
        put(veinfo::CR3, v.cr3);
        put(veinfo::CR4, v.cr4.bits());
        put(veinfo::DR7, v.dr7);
        put(veinfo::SS, q64(8));
        put(veinfo::MXCSR, u64::from(v.mxcsr));
        let xmm = v.xmm;
        for (i, x) in xmm.iter().enumerate() {
            let o = (veinfo::XMM - veinfo::REGS) as usize + 16 * i;
            save[o..o + 16].copy_from_slice(&x.to_le_bytes());
        }
        self.a_write(page.wrapping_add(veinfo::REGS), &save)?;
        self.page_write(page, veinfo::ORIGINAL_STACK, rsp)?;
        let protected = self.page_read(page, veinfo::PROTECTED_STACK)?;
        let v = &mut *self.vcpu;
        v.gpr[4] = protected;
        v.set_reg(Gpr::Rcx, page);
        self.set_rip(rip::STUB_MITIGATE);
        Ok(())
    }

    /// B14–B16: on the first #VE anywhere, CPUID leaf 7 (a VM exit) and, with
    /// ARCH_CAPABILITIES, RDMSR 0x10A pick the mitigations; then every #VE writes SPEC_CTRL
    /// and PRED_CMD (passed through). RSB stuffing only costs time and is not modelled.
    pub(crate) fn stub_mitigate(&mut self) -> Result<(), Stop> {
        let done_gla = layout::AGENT_GVA + layout::DATA_MITIGATIONS_DONE;
        let mut b = [0u8; 8];
        self.a_read(done_gla, &mut b)?;
        let done = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let mut flags = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if done == 0 {
            self.count_exit(ExitReason::Cpuid);
            let r = vesim_model::cpu::cpuid(7, 0);
            let edx = r[3];
            flags = 0;
            if edx & (1 << 26) != 0 {
                flags |= 0b11; // IBRS and IBPB
            }
            if edx & (1 << 27) != 0 {
                flags |= 0b100; // STIBP (detected, never used)
            }
            if edx & (1 << 10) != 0 {
                flags |= 0b1000; // MD_CLEAR
            }
            if edx & (1 << 29) != 0 {
                // RDMSR 0x10A is passed through (no exit); MDS_NO turns MD_CLEAR off.
                let arch = vesim_model::cpu::msr::ARCH_CAP_MDS_NO;
                if arch & (1 << 5) != 0 {
                    flags &= !0b1000;
                }
            }
            let mut w = [0u8; 8];
            w[0..4].copy_from_slice(&1u32.to_le_bytes());
            w[4..8].copy_from_slice(&flags.to_le_bytes());
            self.a_write(done_gla, &w)?;
        }
        if flags & 1 != 0 {
            self.vcpu.spec_ctrl = 1;
        }
        self.set_rip(rip::STUB_CALL);
        Ok(())
    }

    /// B17: push the page pointer, 0x20 bytes of shadow space, call the handler.
    pub(crate) fn stub_call(&mut self) -> Result<(), Stop> {
        let page = self.vcpu.reg(Gpr::Rcx);
        self.push(page)?;
        self.vcpu.gpr[4] = self.vcpu.gpr[4].wrapping_sub(0x20);
        self.push(layout::AGENT_GVA + rip::STUB_RESTORE)?;
        self.set_rip(rip::H_ENTRY);
        Ok(())
    }

    /// B17–B18: pop the page pointer, RSP = OriginalStack, reload XMM, MXCSR and RBP..R15,
    /// write RAX..RBX back into their slots and RSP, RIP, CS, RFLAGS into the IRET frame.
    pub(crate) fn stub_restore(&mut self) -> Result<(), Stop> {
        self.vcpu.gpr[4] = self.vcpu.gpr[4].wrapping_add(0x20);
        let page = self.pop()?;
        let mut save = [0u8; 0x1D8];
        self.a_read(page.wrapping_add(veinfo::REGS), &mut save)?;
        let get = |off: u64| {
            let o = (off - veinfo::REGS) as usize;
            let mut b = [0u8; 8];
            b.copy_from_slice(&save[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let original = self.page_read(page, veinfo::ORIGINAL_STACK)?;
        let v = &mut *self.vcpu;
        v.gpr[4] = original;
        for i in 5..16u64 {
            v.gpr[i as usize] = get(veinfo::REGS + 8 * i);
        }
        v.mxcsr = get(veinfo::MXCSR) as u32;
        for i in 0..16 {
            let o = (veinfo::XMM - veinfo::REGS) as usize + 16 * i;
            let mut b = [0u8; 16];
            b.copy_from_slice(&save[o..o + 16]);
            v.xmm[i] = u128::from_le_bytes(b);
        }
        v.set_reg(Gpr::Rcx, page);
        let mut slots = [0u8; 0x40];
        let put = |s: &mut [u8; 0x40], i: usize, val: u64| {
            s[i * 8..i * 8 + 8].copy_from_slice(&val.to_le_bytes())
        };
        put(&mut slots, 0, get(veinfo::REGS + 24));
        put(&mut slots, 1, get(veinfo::REGS + 16));
        put(&mut slots, 2, get(veinfo::REGS + 8));
        put(&mut slots, 3, get(veinfo::REGS));
        put(&mut slots, 4, get(veinfo::RIP));
        put(&mut slots, 5, get(veinfo::CS));
        put(&mut slots, 6, get(veinfo::RFLAGS));
        put(&mut slots, 7, get(veinfo::REGS + 32));
        self.a_write(original, &slots)?;
        self.set_rip(rip::STUB_EXIT);
        Ok(())
    }

    /// B19: pop RBX and RDX, clear the semaphore, VMFUNC back to the patched untrusted index.
    pub(crate) fn stub_exit(&mut self) -> Result<(), Stop> {
        let rbx = self.pop()?;
        let rdx = self.pop()?;
        self.vcpu.set_reg(Gpr::Rbx, rbx);
        self.vcpu.set_reg(Gpr::Rdx, rdx);
        let page = self.vcpu.reg(Gpr::Rcx);
        self.a_write(page.wrapping_add(veinfo::SEMAPHORE), &0u32.to_le_bytes())?;
        let index = self.stub_imm32(layout::STUB_UNTRUSTED_INDEX_IMM)?;
        self.vmfunc_to(index)?;
        self.set_rip(rip::STUB_RETURN);
        Ok(())
    }

    /// `fixed` Q20: no usable slot: pop RBX and RDX and go back without touching any page.
    pub(crate) fn stub_early_exit(&mut self) -> Result<(), Stop> {
        let rbx = self.pop()?;
        let rdx = self.pop()?;
        self.vcpu.set_reg(Gpr::Rbx, rbx);
        self.vcpu.set_reg(Gpr::Rdx, rdx);
        let index = self.stub_imm32(layout::STUB_UNTRUSTED_INDEX_IMM)?;
        self.vmfunc_to(index)?;
        self.set_rip(rip::STUB_RETURN);
        Ok(())
    }

    /// B20: pop RCX and RAX, then IRETQ (kernel CS, or user CS with a user GS base), or the
    /// KiKernelExit slot (24 NOPs without KPTI: SWAPGS, IRETQ).
    pub(crate) fn stub_return(&mut self) -> Result<(), Stop> {
        let rcx = self.pop()?;
        let rax = self.pop()?;
        self.vcpu.set_reg(Gpr::Rcx, rcx);
        self.vcpu.set_reg(Gpr::Rax, rax);
        let rsp = self.vcpu.gpr[4];
        let mut frame = [0u8; 40];
        self.a_read(rsp, &mut frame)?;
        let q = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&frame[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let user = q(1) & 2 != 0;
        let v = &mut *self.vcpu;
        if user && v.gs_base >> 63 != 0 {
            std::mem::swap(&mut v.gs_base, &mut v.kernel_gs_base);
        }
        v.rip = q(0);
        v.cs = q(1) as u16;
        v.rflags = Rflags::from_bits_retain(q(2)) | Rflags::FIXED1;
        v.gpr[4] = q(3);
        v.ss = q(4) as u16;
        Ok(())
    }
}
