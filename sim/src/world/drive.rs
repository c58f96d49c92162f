//! Guest memory-manager work run to completion on one VCPU: a plan of the memory manager
//! ([`crate::guest::mm::Mm`]) executed instruction by instruction through [`World::step`],
//! then its bookkeeping. What directed tests and setups use; scheduled runs interleave plans
//! through the operation runner instead (`ops::OpRunner`).

use super::World;
use crate::events::{HarnessError, Stop};
use crate::guest::mm::{is_pt_write, Finish, MmError, Plan, MM_STEPS_MAX};
use crate::layout;
use vesim_model::vcpu::Gpr;
use vesim_model::{Gpa, VcpuId};

impl World {
    /// Runs one memory-manager instruction on VCPU `cpu` in process `pid`'s address space
    /// with RDI, RSI and RAX as given, until RIP passes it.
    pub fn mm_exec(
        &mut self,
        cpu: VcpuId,
        pid: u32,
        instr: (u64, &[u8]),
        rdi: u64,
        rsi: u64,
        rax: u64,
    ) -> Result<(), MmError> {
        let cr3 = self.guest.process(pid)?.cr3;
        let start = layout::MM_CODE_GVA + instr.0;
        let end = start + instr.1.len() as u64;
        if is_pt_write(instr.0) {
            self.counters.pt_writes += 1;
        }
        {
            let v = self
                .vcpus
                .get_mut(cpu.0)
                .ok_or(MmError::Stopped(Stop::Harness(HarnessError::NoVcpu(cpu.0))))?;
            v.cr3 = cr3;
            v.rip = start;
            v.set_reg(Gpr::Rdi, rdi);
            v.set_reg(Gpr::Rsi, rsi);
            v.set_reg(Gpr::Rax, rax);
        }
        for _ in 0..MM_STEPS_MAX {
            if self.vcpus[cpu.0].rip == end {
                return Ok(());
            }
            self.step(cpu)?;
        }
        Err(MmError::Stopped(Stop::Harness(HarnessError::StepBound {
            what: format!("the memory-manager instruction at {start:#x}"),
            steps: MM_STEPS_MAX,
        })))
    }

    /// Maps a fresh zeroed page at `va` in process `pid` with the leaf `flags` (P and US are
    /// added for user addresses). Missing tables are allocated and linked top-down, each with a
    /// MOV through the self-map; under KPTI a new user-half PML4 entry is also written into the
    /// user PML4. Returns the frame.
    pub fn mm_map(&mut self, cpu: VcpuId, pid: u32, va: u64, flags: u64) -> Result<Gpa, MmError> {
        let plan = self.mm().plan_map(pid, va, flags)?;
        let frame = match plan.finish {
            Finish::Mapped { frame, .. } => frame,
            _ => Gpa(0),
        };
        self.run_plan(cpu, plan)?;
        Ok(frame)
    }

    /// Unmaps `va` (XCHG of the PTE with 0) and frees its frame.
    pub fn mm_unmap(&mut self, cpu: VcpuId, pid: u32, va: u64) -> Result<(), MmError> {
        let plan = self.mm().plan_unmap(pid, va)?;
        self.run_plan(cpu, plan)
    }

    /// Changes write permission (LOCK OR / LOCK AND of RW) or execute permission (LOCK XOR of
    /// XD when it differs).
    pub fn mm_protect(
        &mut self,
        cpu: VcpuId,
        pid: u32,
        va: u64,
        writable: bool,
        executable: bool,
    ) -> Result<(), MmError> {
        let plan = self.mm().plan_protect(pid, va, writable, executable)?;
        self.run_plan(cpu, plan)
    }

    /// Sets the caching attributes (PWT, PCD, PAT) of `va`'s PTE to `attrs`, with the
    /// instruction form `form % 3`: MOV, LOCK CMPXCHG, or LOCK XOR.
    pub fn mm_set_caching(
        &mut self,
        cpu: VcpuId,
        pid: u32,
        va: u64,
        attrs: u64,
        form: u32,
    ) -> Result<(), MmError> {
        let plan = self.mm().plan_set_caching(pid, va, attrs, form)?;
        self.run_plan(cpu, plan)
    }

    /// Clears the accessed bit of `va`'s PTE (working-set trim: LOCK BTR 5).
    pub fn mm_trim(&mut self, cpu: VcpuId, pid: u32, va: u64) -> Result<(), MmError> {
        let plan = self.mm().plan_trim(pid, va)?;
        self.run_plan(cpu, plan)
    }

    /// Swaps `va` out: its contents go to the pagefile, the PTE becomes a not-present swap
    /// entry (MOV), the frame is freed.
    pub fn mm_swap_out(&mut self, cpu: VcpuId, pid: u32, va: u64) -> Result<(), MmError> {
        let plan = self.mm().plan_swap_out(pid, va)?;
        self.run_plan(cpu, plan)
    }

    /// Swaps `va` back in: a new frame gets the pagefile contents and the PTE points at it
    /// (MOV), present and writable.
    pub fn mm_swap_in(&mut self, cpu: VcpuId, pid: u32, va: u64) -> Result<(), MmError> {
        let plan = self.mm().plan_swap_in(pid, va)?;
        self.run_plan(cpu, plan)
    }

    /// Touches `va` (a read, or a write of RAX), so the page walker sets A (and D).
    pub fn mm_touch(
        &mut self,
        cpu: VcpuId,
        pid: u32,
        va: u64,
        write: bool,
        value: u64,
    ) -> Result<(), MmError> {
        let plan = self.mm().plan_touch(pid, va, write, value)?;
        self.run_plan(cpu, plan)
    }

    /// Runs a plan to completion on VCPU `cpu`, then does its bookkeeping.
    pub fn run_plan(&mut self, cpu: VcpuId, plan: Plan) -> Result<(), MmError> {
        for m in &plan.micros {
            self.mm_exec(cpu, plan.pid, m.instr(), m.rdi, m.rsi, m.rax)?;
        }
        self.mm().finish_plan(plan.pid, plan.finish);
        Ok(())
    }

    /// Process exit: every page is unmapped; the process is marked exited.
    pub fn exit_process(&mut self, cpu: VcpuId, pid: u32) -> Result<(), MmError> {
        let vas: Vec<u64> = self.guest.process(pid)?.pages.keys().copied().collect();
        let swapped: Vec<u64> = self.guest.process(pid)?.swapped.keys().copied().collect();
        for va in vas.into_iter().chain(swapped) {
            self.mm_unmap(cpu, pid, va)?;
        }
        self.engine().unhook_process(pid);
        if let Some(p) = self.guest.processes.get_mut(pid as usize) {
            p.exited = true;
        }
        Ok(())
    }
}
